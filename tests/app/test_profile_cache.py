"""`kfac-ext bench scaling --profile cpu` measures this machine once and reuses the profile:
the cache key, hits and misses, corrupt and foreign files, and the flags. The measurement
is replaced by a recorded fake (no timing, no wall clock); one real tiny measurement runs
in tests/app/test_scaling.py."""

import json
import os

import pytest
import torch

from kfac_ext.app import bench
from kfac_ext.cli import main
from kfac_ext.scaling import profile_cache
from kfac_ext.scaling.measure import Measurement
from kfac_ext.scaling.profile_cache import CacheMissError, cache_key, default_path, load, save
from kfac_ext.scaling.profiles import DeviceProfile

SMALL = [
    "--model",
    "kfac_ext.scaling.models:resnet32_cifar",
    "--input-shape",
    "3,32,32",
    "--batch-size",
    "16",
    "--ranks",
    "1,4",
    "--profile",
    "cpu",
]


def _measurement(rate: float = 5e10, confirmed: bool = True) -> Measurement:
    profile = DeviceProfile("cpu", rate, 2e10, 1e-5, 8e9, f"fake, GEMM {rate:g}")
    return Measurement(profile, ((64, 1e-3, 2e-3), (128, 5e-3, 9e-3)), (), 1.5, 1.8, () if confirmed else ("gemm",), 4)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The cache under tmp_path; measure_profile records its calls and returns ``fake.next``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    class Fake:
        calls: list = []
        next = _measurement()

    def measure(sizes, repeats, **kw):
        Fake.calls.append({"sizes": list(sizes), "repeats": repeats, "threads": torch.get_num_threads(), **kw})
        return Fake.next

    Fake.calls = []
    monkeypatch.setattr(bench, "measure_profile", measure)
    return Fake


def _run(capsys, *argv):
    code = main(["bench", "scaling", *SMALL, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out), err  # exactly one JSON object on stdout, nothing else


KEY = dict(threads=1, sizes=[64, 128, 256, 512], repeats=5, min_seconds=120.0, cpu="CPU X")


def test_key_names_what_the_profile_is_valid_for(monkeypatch, tmp_path):
    key = cache_key(**KEY)
    assert key == {
        "format": profile_cache.FORMAT,
        "device": "cpu",
        "cpu_model": "CPU X",
        "torch": torch.__version__,
        "threads": 1,
        "eigh_sizes": [64, 128, 256, 512],
        "repeats": 5,
        "min_seconds": 120.0,
    }
    assert cache_key(**{**KEY, "sizes": [512, 64, 128, 256, 64]}) == key  # a set of sizes
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_path(key)
    assert os.path.dirname(path) == str(tmp_path / "kfac_ext") and path.endswith(".json")
    assert default_path(dict(key)) == path  # deterministic
    for change in (
        {"threads": 2},
        {"sizes": [64, 128]},
        {"repeats": 3},
        {"min_seconds": 30.0},
        {"cpu": "CPU Y"},
    ):
        assert default_path(cache_key(**{**KEY, **change})) != path, change
    assert default_path({**key, "torch": "0.0"}) != path
    assert default_path({**key, "format": profile_cache.FORMAT + 1}) != path
    # the XDG spec: a relative XDG_CACHE_HOME is ignored, ~/.cache is used
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path(key).startswith(str(tmp_path / "home" / ".cache" / "kfac_ext") + os.sep)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_path(key).startswith(str(tmp_path / "home" / ".cache" / "kfac_ext") + os.sep)
    assert profile_cache.cpu_model()  # this machine's, never empty


def test_save_then_load_and_every_miss(tmp_path):
    key = cache_key(**KEY)
    path = str(tmp_path / "sub" / "p.json")
    with pytest.raises(CacheMissError, match="no cached profile"):
        load(path, key)
    m = _measurement()
    save(path, key, m.as_dict())  # creates the folder
    profile, measured = load(path, key)
    assert profile == m.profile and measured["samples"] == [[64, 1e-3, 2e-3], [128, 5e-3, 9e-3]]
    assert not [f for f in os.listdir(tmp_path / "sub") if f != "p.json"]  # no temporary left
    # another key: the differing fields are named
    with pytest.raises(CacheMissError, match=r"another machine or settings \(threads 1, not 2\)"):
        load(path, {**key, "threads": 2})
    # an unbounded memory is written as null and read back as unbounded
    unbounded = {**m.as_dict(), "profile": {**m.as_dict()["profile"], "memory_bytes": float("inf")}}
    save(path, key, unbounded)
    assert load(path, key)[0].memory_bytes == float("inf")
    good = json.loads(open(path).read())
    for text, reason in (
        ("{ not json", "not JSON"),
        ("[1, 2]", "not a kfac_ext profile cache"),
        (json.dumps({"key": key}), "not a kfac_ext profile cache"),
        (json.dumps({**good, "measured": {**good["measured"], "profile": {"name": "cpu"}}}), "lacks its rates"),
        (
            json.dumps(
                {
                    **good,
                    "measured": {**good["measured"], "profile": {**good["measured"]["profile"], "flops_per_s": -1}},
                }
            ),
            "invalid",
        ),
        (json.dumps({**good, "measured": {**good["measured"], "confirmed": False}}), "not confirmed"),
    ):
        with open(path, "w") as f:
            f.write(text)
        with pytest.raises(CacheMissError, match=reason):
            load(path, key)
    with open(path, "wb") as f:
        f.write(b"\xff\xfe\x00garbage")
    with pytest.raises(CacheMissError, match="unreadable"):
        load(path, key)
    with pytest.raises(CacheMissError, match="unreadable"):
        load(str(tmp_path), key)  # a folder


def test_cli_measures_once_then_reuses(capsys, fake):
    data, err = _json(capsys)
    assert len(fake.calls) == 1 and "measuring this machine's profile" in err
    # the default measurement is the long, repeatable one (120-150 s), on --threads' threads
    assert fake.calls[0]["min_s"] == 120.0 and fake.calls[0]["max_s"] == 150.0 and fake.calls[0]["threads"] == 1
    cache = data["profile_cache"]
    assert cache["hit"] is False and cache["written"] is True and cache["why_measured"] == "no cached profile"
    assert os.path.isfile(cache["path"]) and cache["path"] == default_path(cache["key"])
    assert data["profile"]["flops_per_s"] == 5e10
    fake.next = _measurement(rate=9e10)
    again, err = _json(capsys)
    assert len(fake.calls) == 1 and err == ""  # not measured again, nothing to say
    assert again["profile_cache"]["hit"] is True and again["profile_cache"]["written"] is False
    assert again["profile"]["flops_per_s"] == 5e10 and again["measured"] == data["measured"]
    assert again["rows"] == data["rows"]
    # the memory is this machine's (read, not measured), not the cached 8 GB
    assert again["profile"]["memory_bytes"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    code, out, _ = _run(capsys)
    assert code == 0 and f"profile cache: {cache['path']}: reused (--reprofile to measure again)" in out
    # other settings are another profile: measured, in its own file
    other, _ = _json(capsys, "--threads", "2")
    assert len(fake.calls) == 2 and fake.calls[1]["threads"] == 2 and other["profile_cache"]["path"] != cache["path"]
    assert other["profile"]["flops_per_s"] == 9e10


def test_reprofile_measures_and_replaces(capsys, fake):
    first, _ = _json(capsys)
    fake.next = _measurement(rate=7e10)
    data, err = _json(capsys, "--reprofile")
    assert len(fake.calls) == 2 and data["profile_cache"]["why_measured"] == "--reprofile"
    assert data["profile_cache"]["written"] is True and data["profile"]["flops_per_s"] == 7e10
    assert _json(capsys)[0]["profile"]["flops_per_s"] == 7e10 and len(fake.calls) == 2  # the new one is reused


def test_a_corrupt_cache_is_measured_again_and_said_on_stderr(capsys, fake):
    path = _json(capsys)[0]["profile_cache"]["path"]
    with open(path, "w") as f:
        f.write('{"key": trunc')
    data, err = _json(capsys)
    assert len(fake.calls) == 2
    assert err.startswith(f"kfac-ext bench scaling: profile cache {path}: not JSON (")
    assert "; measuring again" in err and data["profile_cache"]["written"] is True
    assert _json(capsys)[0]["profile_cache"]["hit"] is True  # repaired


def test_a_chosen_file_and_a_foreign_key(capsys, fake, tmp_path):
    path = str(tmp_path / "mine" / "cpu.json")
    data, _ = _json(capsys, "--profile-cache", path)
    assert data["profile_cache"]["path"] == path and os.path.isfile(path)
    assert not os.path.exists(os.path.dirname(default_path(data["profile_cache"]["key"])))
    assert _json(capsys, "--profile-cache", path)[0]["profile_cache"]["hit"] is True
    data, err = _json(capsys, "--profile-cache", path, "--repeats", "3")  # the file holds repeats 5
    assert len(fake.calls) == 2 and "another machine or settings (repeats 5, not 3)" in err
    assert json.loads(open(path).read())["key"]["repeats"] == 3  # replaced by this key's


def test_no_cache_reads_and_writes_nothing(capsys, fake, tmp_path):
    _json(capsys)
    data, _ = _json(capsys, "--no-profile-cache")
    assert len(fake.calls) == 2 and data["profile_cache"]["path"] is None
    assert data["profile_cache"]["why_measured"] == "--no-profile-cache"
    assert len(os.listdir(tmp_path / "xdg" / "kfac_ext")) == 1  # only the first run's file


def test_an_unconfirmed_profile_is_used_but_not_cached(capsys, fake, tmp_path):
    fake.next = _measurement(confirmed=False)
    data, err = _json(capsys)
    assert data["profile_cache"]["written"] is False and not os.path.exists(data["profile_cache"]["path"])
    assert "not cached: quiet window not confirmed for gemm" in err
    _json(capsys)
    assert len(fake.calls) == 2  # measured again


def test_an_unwritable_default_cache_is_a_warning(capsys, fake, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file: its kfac_ext folder cannot be made
    data, err = _json(capsys)
    assert data["profile_cache"]["written"] is False and "could not write the profile cache" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--profile", "h100", "--reprofile"], "--reprofile applies to --profile cpu only"),
        (["--profile", "v100", "--no-profile-cache"], "--no-profile-cache applies to --profile cpu only"),
        (["--profile-cache", "."], "give a file name, not a folder"),
        (["--profile-cache", "/proc/no/such/x.json"], "--profile-cache /proc/no/such/x.json: cannot write"),
    ],
)
def test_bad_cache_flags_are_one_line_errors_before_measuring(capsys, fake, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code != 0 and out == "" and message in err and len(err.strip().splitlines()) == 1
    assert fake.calls == []


def test_the_cache_flags_exclude_each_other(capsys, fake, tmp_path):
    code, out, err = _run(capsys, "--profile-cache", str(tmp_path / "p.json"), "--no-profile-cache")
    assert code == 2 and out == "" and "--no-profile-cache: not allowed with argument --profile-cache" in err
    assert fake.calls == []
