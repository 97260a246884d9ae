"""What ``air serve`` accepts from the network: the limits every request is held to."""

import re

#: Limits on what a request may ask for.
MAX_BODY_BYTES = 5 * 1024 * 1024  # uploads and JSON bodies
MAX_IMAGE_PIXELS = 16_000_000  # an uploaded image's width x height, checked before decoding
MAX_SAMPLES = 32  # scenes per Generate request
SCALE_RANGE = (0.25, 20.0)  # zoom s of the transform explorer (window side = image_size / s)
SHIFT_RANGE = (-3.0, 3.0)  # window centre x, y in normalised image coordinates
UPLOAD_TYPES = ("image/", "application/octet-stream")
N_SCENES = 500  # held-out scenes kept in memory for "random test scene"
MAX_JSON_DEPTH = 32  # [ and { nesting of a JSON body (the API's bodies use 2)
SEED_PATTERN = re.compile(r"[0-9]{1,10}")  # ?seed= of /api/scene: ASCII digits only ('²' is str.isdigit())

#: Limits on memory and connections (the server must survive what any machine on the network sends).
DECODES_AT_ONCE = 2  # uploads decoded at the same time (a 16-megapixel RGBA image is ~100 MB while decoded)
SHRINK_FACTOR = 16  # uploads are shrunk inside Pillow to at most this x the model's side before the float steps
BODIES_BYTES_AT_ONCE = 64 * 1024 * 1024  # request bodies held at once, all requests together (else 503)
REQUEST_SECONDS = 10.0  # a request's line, headers and body must all arrive within this (else 408, closed)
KEEP_ALIVE_SECONDS = 5.0  # an idle keep-alive connection is closed after this
CONNECTIONS_AT_ONCE = 512  # open connections (uvicorn's limit_concurrency; more are answered 503)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
