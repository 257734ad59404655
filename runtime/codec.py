"""Frame encodings of the Animate stream: RAW_RGB8, JPEG, PNG (Pillow), for the server and the clients.

Every function takes / returns uint8 RGB frames ``[H,W,3]`` (row-major, top row first). String names
("raw_rgb8", "jpeg", "png") and the proto enum values are both accepted wherever an encoding is named.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from flexrt.proto import flexavatar_pb2 as pb

ENCODINGS = {"raw_rgb8": pb.RAW_RGB8, "raw": pb.RAW_RGB8, "jpeg": pb.JPEG, "jpg": pb.JPEG, "png": pb.PNG}
DEFAULT_JPEG_QUALITY = 90
# zlib level 1: PNG stays lossless; higher levels cost several ms a frame for a few percent of bytes.
PNG_COMPRESS_LEVEL = 1
# Largest photo decoded by default: 4096x4096 (16.8 MP, 50 MB as RGB). A photo is resized to the encoder's 512x512,
# so more pixels add nothing but decode time and memory; the server's max_photo_pixels overrides it.
DEFAULT_MAX_PHOTO_PIXELS = 4096 * 4096


def encoding_value(encoding) -> int:
    """'raw_rgb8' | 'jpeg' | 'png' | proto enum value -> proto enum value (UNSPECIFIED -> RAW_RGB8)."""
    if isinstance(encoding, str):
        key = encoding.lower()
        if key not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of 'raw_rgb8', 'jpeg', 'png'")
        return ENCODINGS[key]
    value = int(encoding)
    if value == pb.ENCODING_UNSPECIFIED:
        return pb.RAW_RGB8
    if value not in (pb.RAW_RGB8, pb.JPEG, pb.PNG):
        raise ValueError(f"unknown encoding value {value}; expected RAW_RGB8 (1), JPEG (2) or PNG (3)")
    return value


def encoding_name(encoding) -> str:
    return {pb.RAW_RGB8: "raw_rgb8", pb.JPEG: "jpeg", pb.PNG: "png"}[encoding_value(encoding)]


def encode_frame(rgb: np.ndarray, encoding, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """rgb uint8 [H,W,3] -> bytes in ``encoding``."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H,W,3] frame, got {rgb.dtype} {tuple(rgb.shape)}")
    enc = encoding_value(encoding)
    if enc == pb.RAW_RGB8:
        return np.ascontiguousarray(rgb).tobytes()
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb))  # uint8 [H,W,3] -> mode "RGB"
    if enc == pb.JPEG:
        image.save(buf, format="JPEG", quality=int(quality or DEFAULT_JPEG_QUALITY))
    else:
        image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_frame(data: bytes, encoding, width: int, height: int) -> np.ndarray:
    """Bytes of one frame -> uint8 [H,W,3]; raises ValueError when the size does not match."""
    enc = encoding_value(encoding)
    if enc == pb.RAW_RGB8:
        expected = width * height * 3
        if len(data) != expected:
            raise ValueError(f"RAW_RGB8 frame has {len(data)} bytes, expected {height}x{width}x3 = {expected}")
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"))
    if rgb.shape != (height, width, 3):
        raise ValueError(f"decoded frame is {rgb.shape[1]}x{rgb.shape[0]}, expected {width}x{height}")
    return rgb


def check_image_header(image: Image.Image, max_pixels: int, square: bool) -> None:
    """Checks on an opened, not yet decoded image (Image.open reads only the header): format PNG/JPEG, at most
    ``max_pixels`` pixels, square when ``square``. Raises ValueError naming what arrived and what is allowed."""
    if image.format not in ("PNG", "JPEG"):
        raise ValueError(f"image format {image.format} is not supported; send PNG or JPEG")
    w, h = image.size
    if w * h > max_pixels:
        raise ValueError(f"image is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of {max_pixels} pixels "
                         f"({max_pixels / 1e6:.1f} megapixels); send a smaller head crop (it is resized to the "
                         "encoder's input size anyway)")
    if square and w != h:
        raise ValueError(f"image must be a square head crop, got {w}x{h}")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PHOTO_PIXELS, square: bool = False) -> np.ndarray:
    """PNG/JPEG bytes of a photo -> uint8 RGB [H,W,3]; alpha is composited on white (as the official pipeline
    composites matted photos). The header is checked before anything is decoded (check_image_header), so a small
    file that declares a huge image costs microseconds, not seconds and gigabytes. Raises ValueError with the
    reason when the bytes are not an acceptable PNG/JPEG image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_image_header(image, max_pixels, square)
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            return np.asarray(image.convert("RGB"))
    except ValueError:
        raise
    except Image.DecompressionBombError as exc:  # Image.open refuses twice Pillow's own limit before we can look
        raise ValueError(f"image is over the limit of {max_pixels} pixels ({exc})") from None
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError ... on bad bytes
        raise ValueError(f"image bytes could not be decoded as PNG/JPEG ({type(exc).__name__}: {exc})") from None


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [S,S,3] -> uint8 [size,size,3] (Lanczos); raises ValueError for a non-square image."""
    h, w = rgb.shape[:2]
    if h != w:
        raise ValueError(f"image must be a square head crop, got {w}x{h}")
    if h == size:
        return rgb
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.LANCZOS))
