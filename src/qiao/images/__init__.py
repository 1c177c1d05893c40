"""Images: root filesystems with their configuration, for containers to run in.

qiao pulls nothing (no registry is reachable, and pulling is not its job):
an image arrives through ``docker import`` (a root filesystem tar) or
``docker load`` (a ``docker save`` archive or an OCI image layout), is
unpacked once, safely, into one directory under qiao's root, and is the
read-only lower layer of every container made from it (an overlay mount
with a per-container upper layer, see :mod:`qiao.runtime.rootfs`).

Modules, one concept each:

``reference``  image names as Docker reads them (``busybox`` is ``docker.io/library/busybox:latest``)
``unpack``     applying a layer tar to a directory: no path escapes, no device nodes, size limits
``archive``    the two archive layouts ``docker load`` takes
``config``     the image configuration: parsing, ``docker import --change``, merging into a container
``registry``   the images of one qiao root: records, tags, import/load/remove, who uses what
"""
