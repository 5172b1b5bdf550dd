"""Real servers on 127.0.0.1 for the tests and the benchmarks: redis-server, SeaweedFS ``weed mini`` as
the S3 server, and ``celery worker`` processes started as operators start them. No pytest in here.
"""
