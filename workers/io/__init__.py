"""Input and output: storage backends by URL scheme, decoding limits, weights, the submission format.

The lowest layer but the shared settings and errors: it imports nothing else of this project.
"""
