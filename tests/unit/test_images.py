"""Images without a daemon: references, safe unpacking (malicious tars
among them), the two ``docker load`` layouts, the registry's tags and
removal rules, and the image config merged into a container."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.specs import ContainerSpec
from qiao.engine.store import Store
from qiao.images import config, reference
from qiao.images.registry import Images, unix_time
from qiao.images.unpack import Budget, Limits, TooLarge, UnsafeArchive, apply_layer, clean_path
from qiao.paths import Root

ROOT = os.geteuid() == 0

# -- building archives ----------------------------------------------------------------


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, link: str = "", uid: int = 0, gid: int = 0, **kw: Any
):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid, info.mtime = kind, mode, link, uid, gid, 1_000_000
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def tar_bytes(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def d(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.DIRTYPE, mode=mode)


def f(name: str, data: bytes = b"x", mode: int = 0o644, **kw: Any) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, data=data, mode=mode, **kw)


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, mode=0o777, link=target)


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.LNKTYPE, link=target)


def apply(root: Path, data: bytes, limits: Limits | None = None) -> str:
    return apply_layer(io.BytesIO(data), str(root), Budget(limits or Limits()))


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """An image root, with a sibling ``outside`` that no archive may touch."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim").write_text("original")
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def untouched(rootfs: Path) -> None:
    outside = rootfs.parent / "outside"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original"


# -- references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, familiar, name",
    [
        ("busybox", "busybox:latest", "docker.io/library/busybox"),
        ("busybox:1.36", "busybox:1.36", "docker.io/library/busybox"),
        ("docker.io/library/busybox:latest", "busybox:latest", "docker.io/library/busybox"),
        ("docker.io/me/app", "me/app:latest", "docker.io/me/app"),
        ("library/busybox", "busybox:latest", "docker.io/library/busybox"),
        ("localhost/busybox:local", "localhost/busybox:local", "localhost/busybox"),
        ("registry.example:5000/a/b-c_d.e:v1.2", "registry.example:5000/a/b-c_d.e:v1.2", "registry.example:5000/a/b-c_d.e"),
        ("qiao/host", "qiao/host:latest", "docker.io/qiao/host"),
        ("busybox@sha256:" + "a" * 64, "busybox@sha256:" + "a" * 64, "docker.io/library/busybox"),
    ],
)
def test_reference_normalised_as_docker(text, familiar, name):
    ref = reference.parse(text)
    assert (ref.familiar(), ref.name) == (familiar, name)


@pytest.mark.parametrize(
    "text", ["", "Busybox", "busybox:", "busybox:-x", "a" * 64, "busybox@sha256:xyz", "a//b", "-a", "busybox:" + "t" * 129]
)
def test_reference_refused(text):
    with pytest.raises(InvalidParameter, match="invalid"):
        reference.parse(text)


def test_host_image_and_tags():
    assert reference.is_host("") and reference.is_host("qiao/host") and reference.is_host("docker.io/qiao/host:latest")
    assert not reference.is_host("qiao/host:v2") and not reference.is_host("busybox") and not reference.is_host("Bad Name")
    assert reference.with_tag("busybox", "1").familiar() == "busybox:1"
    assert reference.with_tag("busybox:2", "").familiar() == "busybox:2"
    assert reference.with_tag("busybox", "").familiar() == "busybox:latest"
    with pytest.raises(InvalidParameter):
        reference.with_tag("busybox@sha256:" + "a" * 64, "")


# -- unpacking ---------------------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="owners need root")
def test_layer_is_applied_with_owners_modes_links_and_its_diff_id(rootfs):
    data = tar_bytes(
        d("bin"),
        f("bin/tool", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        f("home/user/file", b"mine", mode=0o600, uid=1000, gid=1000),  # its directories are made on the way
        sym("bin/sh", "tool"),
        sym("etc", "/nonexistent/etc"),  # a link anywhere is data: never followed while unpacking
        hard("bin/tool2", "bin/tool"),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        d("tmp", mode=0o1777),
    )
    assert apply(rootfs, data) == "sha256:" + hashlib.sha256(data).hexdigest()
    st = os.stat(rootfs / "bin/tool")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (0, 0)  # setuid kept (chmod after chown)
    st = os.stat(rootfs / "home/user/file")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1000, 1000)
    assert stat.S_IMODE(os.stat(rootfs / "home").st_mode) == 0o755
    assert os.readlink(rootfs / "bin/sh") == "tool" and os.readlink(rootfs / "etc") == "/nonexistent/etc"
    assert os.stat(rootfs / "bin/tool2").st_ino == st.st_ino or os.stat(rootfs / "bin/tool2").st_ino == os.stat(rootfs / "bin/tool").st_ino
    assert stat.S_ISFIFO(os.lstat(rootfs / "run/fifo").st_mode) and stat.S_IMODE(os.lstat(rootfs / "run/fifo").st_mode) == 0o620
    assert stat.S_IMODE(os.stat(rootfs / "tmp").st_mode) == 0o1777
    assert os.stat(rootfs / "bin/tool").st_mtime == 1_000_000


def test_compressed_layers_give_the_uncompressed_diff_id(rootfs):
    data = tar_bytes(f("a", b"gz"))
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert apply(rootfs, gzip.compress(data)) == expected
    assert apply(rootfs, lzma.compress(data)) == expected
    assert (rootfs / "a").read_bytes() == b"gz"


@pytest.mark.parametrize(
    "entries, message",
    [
        ([f("/etc/passwd", b"x")], "absolute"),
        ([f("../outside/victim", b"pwned")], r"\.\."),
        ([f("a/../../outside/victim", b"pwned")], r"\.\."),
        ([sym("evil", "../outside"), f("evil/victim", b"pwned")], "symbolic link"),
        ([sym("evil", "/"), f("evil/tmp/x", b"pwned")], "symbolic link"),
        ([d("a"), sym("a/b", "../../outside"), f("a/b/victim", b"pwned")], "symbolic link"),
        ([hard("link", "/etc/passwd")], "absolute"),
        ([hard("link", "../outside/victim")], r"\.\."),
        ([sym("evil", "../outside"), hard("link", "evil/victim")], "symbolic link"),
        ([sym("evil", "../outside"), f("evil/sub/.wh.x")], "symbolic link"),  # a whiteout through a link
        ([sym("evil", "../outside"), f("evil/.wh.victim")], "symbolic link"),
        ([f("a", b"file"), f("a/b", b"under a file")], "not a directory"),
        ([hard("link", "nothing")], "not there"),
        ([d("dir"), hard("link", "dir")], "directory"),
        ([f(".wh.", b"")], "names no file"),
        ([f("x", uid=(1 << 32) - 1)], "owner"),
    ],
)
def test_malicious_layer_is_refused_and_touches_nothing_outside(rootfs, entries, message):
    with pytest.raises(UnsafeArchive, match=message):
        apply(rootfs, tar_bytes(*entries))
    untouched(rootfs)


def test_symlink_to_outside_then_a_file_replacing_it_does_not_write_through(rootfs):
    """A later entry at a link's path replaces the link; it never writes to the link's target."""
    apply(rootfs, tar_bytes(sym("victim", "../outside/victim"), f("victim", b"replaced")))
    untouched(rootfs)
    assert (rootfs / "victim").read_bytes() == b"replaced" and not os.path.islink(rootfs / "victim")


def test_links_made_by_an_earlier_layer_are_not_followed_either(rootfs):
    apply(rootfs, tar_bytes(sym("etc", "../outside")))
    with pytest.raises(UnsafeArchive, match="symbolic link"):
        apply(rootfs, tar_bytes(f("etc/victim", b"pwned")))
    untouched(rootfs)


def test_device_nodes_are_skipped(rootfs):
    budget = Budget(Limits())
    data = tar_bytes(
        entry("dev/sda", tarfile.BLKTYPE, mode=0o666, devmajor=8, devminor=0),
        entry("dev/mem", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=1),
        hard("dev/mem2", "dev/mem"),  # a link to a skipped device is skipped with it
        f("dev/ok", b"file"),
    )
    apply_layer(io.BytesIO(data), str(rootfs), budget)
    assert sorted(os.listdir(rootfs / "dev")) == ["ok"] and budget.skipped_devices == 2


def test_whiteouts_and_opaque_directories(rootfs):
    apply(rootfs, tar_bytes(d("etc"), f("etc/a"), f("etc/b"), d("opt"), f("opt/old"), d("opt/sub"), f("opt/sub/deep"), f("gone")))
    apply(
        rootfs,
        tar_bytes(f("etc/.wh.a"), f(".wh.gone"), f(".wh.never-was"), d("opt"), f("opt/new"), f("opt/.wh..wh..opq"), f("etc/.wh..wh.plnk")),
    )
    assert sorted(os.listdir(rootfs)) == ["etc", "opt"]
    assert sorted(os.listdir(rootfs / "etc")) == ["b"]
    assert sorted(os.listdir(rootfs / "opt")) == ["new"]  # the opaque marker hid the layer below, not its own layer's entry


def test_replacements_between_kinds(rootfs):
    apply(rootfs, tar_bytes(d("a"), f("a/x"), f("b"), sym("c", "b")))
    apply(rootfs, tar_bytes(f("a", b"now a file"), d("b"), f("b/y"), d("c")))
    assert (rootfs / "a").read_bytes() == b"now a file"
    assert os.path.isdir(rootfs / "b") and os.path.isdir(rootfs / "c") and not os.path.islink(rootfs / "c")


@pytest.mark.parametrize(
    "limits, data",
    [
        (Limits(content=100), tar_bytes(f("big", b"x" * 101))),
        (Limits(entries=3), tar_bytes(f("a"), f("b"), f("c"), f("d"))),
        (Limits(content=10, entries=1), gzip.compress(b"\0" * (4 << 20))),  # a bomb of zeros past the end of the tar
    ],
)
def test_limits_are_413(rootfs, limits, data):
    with pytest.raises(TooLarge):
        apply(rootfs, data, limits)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not a tar at all" * 100, "tar"),
        (tar_bytes(f("a", b"x" * 5000))[:2048], "tar"),  # cut short
        (gzip.compress(tar_bytes(f("a")))[:-12], "compressed"),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 100, "zstd"),
    ],
)
def test_broken_layers_are_400(rootfs, data, message):
    with pytest.raises(InvalidParameter, match=message):
        apply(rootfs, data)


def test_clean_path():
    assert clean_path("./a//b/./c/") == ["a", "b", "c"] and clean_path(".") == [] and clean_path("./") == []


# -- archives and the registry ---------------------------------------------------------------


def oci_archive(
    layers: list[bytes], process: dict[str, Any], name: str = "localhost/img:1", compress: bool = False, corrupt: bool = False
) -> bytes:
    """An OCI image layout tar (layers gzip-compressed if ``compress``)."""
    blobs: dict[str, bytes] = {}

    def add(data: bytes, media: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": "sha256:" + digest, "size": len(data)}

    stored = [gzip.compress(layer) if compress else layer for layer in layers]
    layer_descs = [add(s, "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")) for s in stored]
    cfg = {"architecture": config.goarch(), "os": "linux", "config": process, "rootfs": {"type": "layers", "diff_ids": [
        "sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]}, "created": "2024-05-06T07:08:09.123456789Z"}  # fmt: skip
    cfg_desc = add(json.dumps(cfg).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg_desc, "layers": layer_descs}
    man_desc = add(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    man_desc["annotations"] = {"io.containerd.image.name": name} if name else {}
    index = {"schemaVersion": 2, "manifests": [man_desc]}
    if corrupt:
        first = layer_descs[0]["digest"][7:]
        blobs[first] = blobs[first][:-1] + bytes([blobs[first][-1] ^ 1])
    files = [f(f"blobs/sha256/{k}", v) for k, v in blobs.items()] + [f("index.json", json.dumps(index).encode()), f("oci-layout", b"{}")]
    return tar_bytes(*files)


def docker_archive(layers: list[bytes], process: dict[str, Any], tags: list[str], diff_ids: list[str] | None = None) -> bytes:
    """A ``docker save`` archive (manifest.json), layers gzip-compressed."""
    ids = diff_ids or ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    cfg = json.dumps(
        {"architecture": config.goarch(), "os": "linux", "config": process, "rootfs": {"type": "layers", "diff_ids": ids}}
    ).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    files = [f(cfg_name, cfg)]
    names = []
    for n, layer in enumerate(layers):
        files.append(f(f"l{n}/layer.tar", gzip.compress(layer)))
        names.append(f"l{n}/layer.tar")
    files.append(f("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": tags, "Layers": names}]).encode()))
    return tar_bytes(*files)


class Users:
    def __init__(self) -> None:
        self.by_image: dict[str, list[tuple[str, bool]]] = {}

    def __call__(self, image_id: str) -> list[tuple[str, bool]]:
        return self.by_image.get(image_id, [])


@pytest.fixture
def images(tmp_path: Path) -> Images:
    root = Root.resolve(str(tmp_path / "q"))
    root.ensure()
    reg = Images(root, Store(root.store), threading.RLock(), Limits(archive=1 << 24, content=1 << 24, entries=1000))
    reg.users = Users()
    reg.load()
    return reg


BASE = tar_bytes(d("bin"), f("bin/sh", b"shell", mode=0o755), d("etc"), f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), f("etc/old"))
TOP = tar_bytes(f("etc/.wh.old"), f("etc/new", b"new"))


def test_import_a_root_filesystem_with_changes(images):
    img = images.import_tar(
        io.BytesIO(gzip.compress(BASE)), "my/base", "v1", ['CMD ["sh"]', "ENV A=1 B='two words'", "WORKDIR /srv", "EXPOSE 80"], "hi"
    )
    assert img.repo_tags == ["my/base:v1"] and img.id == "sha256:" + hashlib.sha256(img.config.encode()).hexdigest()
    cfg = img.parsed()
    assert cfg.rootfs.diff_ids == ["sha256:" + hashlib.sha256(BASE).hexdigest()] and cfg.comment == "hi"
    assert cfg.config is not None and (cfg.config.Cmd, cfg.config.Env, cfg.config.WorkingDir) == (["sh"], ["A=1", "B=two words"], "/srv")
    assert cfg.config.ExposedPorts == {"80/tcp": {}}
    assert (Path(images.rootfs(img.id)) / "bin/sh").read_bytes() == b"shell"
    assert images.get("my/base:v1") is img and images.get(img.hex[:5]) is img and images.get(img.id) is img
    assert os.listdir(images.tmp) == []


def test_import_refuses_bad_changes_before_reading(images):
    with pytest.raises(InvalidParameter, match="RUN is not a valid change command"):
        images.import_tar(io.BytesIO(b""), "x", "", ["RUN rm -rf /"], "")


@pytest.mark.parametrize("layout", ["oci", "oci-gzip", "docker"])
def test_load_applies_the_layers_in_order(images, layout):
    process = {"Cmd": ["sh"], "Env": ["PATH=/bin"]}
    data = (
        docker_archive([BASE, TOP], process, ["busybox:latest"])
        if layout == "docker"
        else oci_archive([BASE, TOP], process, "docker.io/library/busybox:latest", compress=layout == "oci-gzip")
    )
    [(img, tags)] = images.load_archive(io.BytesIO(data))
    assert tags == ["busybox:latest"] and img.repo_tags == ["busybox:latest"]
    root = Path(images.rootfs(img.id))
    assert sorted(os.listdir(root / "etc")) == ["new", "passwd"]
    assert images.listing() == [img] and images.listing(dangling=True) == [] and images.listing(patterns=["busy*"]) == [img]
    assert images.listing(patterns=["busybox:1"]) == [] and images.listing(patterns=["busybox"]) == [img]
    # the same archive again: the same image, nothing unpacked twice, nothing left in tmp
    assert images.load_archive(io.BytesIO(data))[0][0] is img and os.listdir(images.tmp) == []


def test_load_untagged_oci_image(images):
    [(img, tags)] = images.load_archive(io.BytesIO(oci_archive([BASE], {}, name="")))
    assert tags == [] and img.repo_tags == [] and images.listing(dangling=True) == [img]


@pytest.mark.parametrize(
    "data, message",
    [
        (oci_archive([BASE], {}, corrupt=True), "digest"),
        (docker_archive([BASE], {}, ["x:1"], diff_ids=["sha256:" + "0" * 64]), "diff id"),
        (docker_archive([BASE, TOP], {}, ["x:1"], diff_ids=["sha256:" + "0" * 64]), "names 1 layers"),
        (tar_bytes(f("hello", b"world")), "neither"),
        (tar_bytes(f("manifest.json", b"{oops")), "not JSON"),
        (tar_bytes(f("manifest.json", b'[{"Config": "c.json", "Layers": ["nope.tar"], "RepoTags": null}]'), f("c.json", b"{}")), "missing"),
        (tar_bytes(f("index.json", b'{"manifests": [{"digest": "sha256:../../etc/passwd"}]}')), "digest"),
        (b"garbage" * 1000, "tar"),
    ],
)
def test_bad_archives_are_400_and_leave_nothing(images, data, message):
    with pytest.raises(InvalidParameter, match=message):
        images.load_archive(io.BytesIO(data))
    assert images.listing() == [] and os.listdir(images.tmp) == [] and os.listdir(images.dir) == ["tmp"]


def test_upload_over_the_archive_limit_is_413(images):
    with pytest.raises(TooLarge):
        images.load_archive(io.BytesIO(b"\0" * ((1 << 24) + 1)))
    assert os.listdir(images.tmp) == []


def test_a_tag_moves_to_the_image_loaded_last(images):
    first = images.import_tar(io.BytesIO(BASE), "app", "", [], "")
    second = images.import_tar(io.BytesIO(TOP), "app", "", [], "")
    assert first.repo_tags == [] and second.repo_tags == ["app:latest"]
    assert images.tag("app", "other/name", "v2") == "other/name:v2" and second.repo_tags == ["app:latest", "other/name:v2"]
    with pytest.raises(NotFound, match="No such image: nothing:latest"):
        images.get("nothing")


def test_records_survive_a_restart(images, tmp_path):
    img = images.import_tar(io.BytesIO(BASE), "keep", "", [], "")
    again = Images(Root.resolve(str(tmp_path / "q")), images.store, threading.RLock())
    again.load()
    assert again.get("keep").id == img.id and os.path.isdir(again.rootfs(img.id))


def test_rmi_follows_docker(images):
    users: Users = images.users  # type: ignore[assignment]
    archived = docker_archive([BASE], {}, ["a:latest"])
    [(img, _tags)] = images.load_archive(io.BytesIO(archived))
    images.tag("a", "b", "")
    assert images.remove("b") == [{"Untagged": "b:latest"}]  # one of several tags: only untagged
    users.by_image[img.id] = [("c" * 64, False)]
    with pytest.raises(Conflict, match=r'unable to remove repository reference "a" \(must force\) - container cccccccccccc'):
        images.remove("a")
    with pytest.raises(Conflict, match=r"\(must be forced\) - image is being used by stopped container"):
        images.remove(img.hex[:12])
    users.by_image[img.id] = [("d" * 64, True)]
    with pytest.raises(Conflict, match=r"\(cannot be forced\) - image is being used by running container dddddddddddd"):
        images.remove(img.id, force=True)
    assert images.remove("a", force=True) == [{"Untagged": "a:latest"}]  # a running user keeps the (now dangling) image
    assert images.get(img.id).repo_tags == []
    users.by_image[img.id] = [("c" * 64, False)]
    assert images.remove(img.id, force=True) == [{"Deleted": img.id}]  # a stopped user: gone, its files stay for it
    assert os.path.isdir(images.rootfs(img.id))
    inode = os.stat(images.rootfs(img.id)).st_ino
    [(again, _tags)] = images.load_archive(io.BytesIO(archived))  # the same image again, while its old files are in use
    assert again.id == img.id and os.stat(images.rootfs(img.id)).st_ino == inode  # kept: they may be a lower layer now
    images.remove("a", force=True)
    users.by_image.clear()
    images.release(img.id)  # the container went
    assert not os.path.exists(os.path.dirname(images.rootfs(img.id)))


def test_rmi_by_id_of_an_image_with_several_tags(images):
    img = images.import_tar(io.BytesIO(BASE), "x", "1", [], "")
    images.tag("x:1", "x", "2")
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        images.remove(img.hex)
    assert images.remove(img.hex, force=True) == [{"Untagged": "x:1"}, {"Untagged": "x:2"}, {"Deleted": img.id}]


def test_rmi_of_a_name_that_is_also_hex_is_by_name(images):
    img = images.import_tar(io.BytesIO(BASE), "beef", "", [], "")
    images.tag("beef", "cafe", "")
    assert images.remove("beef") == [{"Untagged": "beef:latest"}]  # not "referenced in multiple repositories"
    assert images.remove("cafe") == [{"Untagged": "cafe:latest"}, {"Deleted": img.id}]


def test_unix_time_reads_go_timestamps():
    assert unix_time("2024-05-06T07:08:09.123456789Z") == 1714979289
    assert unix_time("2024-05-06T07:08:09+02:00") == 1714972089 and unix_time("bad") == 0


# -- the config into a container ----------------------------------------------------------------


def merged(image: dict[str, Any], **user: Any) -> ContainerSpec:
    return config.merge(ContainerSpec(cmd=tuple(user.pop("cmd", ())), **user), config.ProcessConfig(**image))


def test_merge_as_moby():
    image = {
        "Env": ["PATH=/bin", "A=image"],
        "Cmd": ["sh"],
        "Entrypoint": ["/init"],
        "WorkingDir": "/w",
        "User": "nobody",
        "ExposedPorts": {"80/tcp": {}},
    }
    spec = merged(image)
    assert (spec.entrypoint, spec.cmd, spec.user, spec.workdir) == (("/init",), ("sh",), "nobody", "/w")
    assert spec.env == ("PATH=/bin", "A=image") and spec.exposed_ports == ("80/tcp",)
    spec = merged(image, cmd=("echo", "hi"), env=("A=user", "B=2"), user="0", workdir="/x", exposed_ports=("53/udp",))
    assert (spec.entrypoint, spec.cmd, spec.user, spec.workdir) == (("/init",), ("echo", "hi"), "0", "/x")
    assert spec.env == ("A=user", "B=2", "PATH=/bin") and spec.exposed_ports == ("53/udp", "80/tcp")
    spec = merged(image, entrypoint=("/bin/echo",))  # --entrypoint: the image's Cmd goes too
    assert (spec.entrypoint, spec.cmd) == (("/bin/echo",), ())
    spec = merged(image, entrypoint=("",))  # --entrypoint "": cleared, and the image's Cmd with it (moby: "No command specified")
    assert (spec.entrypoint, spec.cmd) == ((), ())
    spec = merged(image, entrypoint=("",), cmd=("ls",))
    assert (spec.entrypoint, spec.cmd) == ((), ("ls",))
    spec = merged(image, entrypoint=())  # an empty list given: the image's Cmd, not its Entrypoint
    assert (spec.entrypoint, spec.cmd) == ((), ("sh",))
    assert merged({}, cmd=("true",)).cmd == ("true",)


def test_changes_as_a_dockerfile():
    cfg = config.apply_changes(
        config.ProcessConfig(Env=["A=0"]),
        [
            "ENTRYPOINT /bin/run --flag",
            "ENV A 1 2",
            'LABEL a=b c="d e"',
            "USER app:app",
            'VOLUME ["/data"]',
            "STOPSIGNAL SIGINT",
            "EXPOSE 53/udp 80",
        ],
    )
    assert cfg.Entrypoint == ["/bin/sh", "-c", "/bin/run --flag"] and cfg.Env == ["A=1 2"]
    assert cfg.Labels == {"a": "b", "c": "d e"} and cfg.User == "app:app" and cfg.Volumes == {"/data": {}}
    assert cfg.StopSignal == "SIGINT" and cfg.ExposedPorts == {"53/udp": {}, "80/tcp": {}}
    for bad in ("FROM scratch", "ONBUILD RUN x", "ENV =x", "LABEL novalue"):
        with pytest.raises(InvalidParameter):
            config.apply_changes(config.ProcessConfig(), [bad])


def test_image_config_parsing():
    cfg = config.parse(
        b'{"os": "linux", "config": {"Cmd": null, "Env": ["A=1"], "Entrypoint": null}, "rootfs": {"type": "layers", "diff_ids": []}}'
    )
    assert cfg.config is not None and cfg.config.Cmd is None and cfg.config.Env == ["A=1"]
    assert config.parse(b'{"config": null}').config is None
    for bad in (b"[]", b"{", b'{"config": {"Cmd": "sh"}}', b'{"rootfs": {"diff_ids": [1]}}'):
        with pytest.raises(InvalidParameter, match="invalid image config"):
            config.parse(bad)
