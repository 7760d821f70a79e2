"""Tiny image files for source tests that build datasets in their real file layouts."""
import io
import os

import PIL.Image


def write_jpeg(path, color=(200, 30, 30), size=(8, 6)) -> bytes:
  """Writes a small solid-colour JPEG (creating its folder); returns its bytes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buffer = io.BytesIO()
  PIL.Image.new("RGB", size, color).save(buffer, format="JPEG")
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
  return buffer.getvalue()


def write_corrupt_jpeg(path) -> None:
  """Writes a file with a JPEG header and garbage after it."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 not a jpeg")
