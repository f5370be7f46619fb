"""The preconditioner needs torch alone; the application and the MILP need their extras.

`pip install kfac_ext` without extras must give a working KFACPreconditioner, so
the core may not import the [app] (tqdm, matplotlib, scikit-learn) or [placement]
(highspy) dependencies; a command that needs a missing extra says which, in one
line, before doing any work. Each check runs in a fresh interpreter: this test
process may already have imported any of those modules.
"""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = ("tqdm", "matplotlib", "sklearn", "highspy")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_core_step_imports_no_optional_dependency():
    proc = _python(f"""
        import sys
        import torch
        # torch itself loads tqdm when it is installed; what counts is what we add.
        before = set(sys.modules)
        import kfac_ext
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(),
                                    torch.nn.Linear(12, 5))
        pre = kfac_ext.KFACPreconditioner(model)
        model(torch.randn(4, 2, 4, 4)).sum().backward()
        pre.step()
        kfac_ext.ops.pack_triu([torch.eye(3)])
        loaded = sorted(m for m in set(sys.modules) - before
                        if m.split(".")[0] in {OPTIONAL!r} or m.startswith("kfac_ext.app"))
        print(loaded)
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the core imported optional modules: {proc.stdout}"


def _without(module: str, argv: list) -> subprocess.CompletedProcess:
    # None in sys.modules makes `import module` raise ModuleNotFoundError, as if absent.
    return _python(f"""
        import sys
        sys.modules[{module!r}] = None
        from kfac_ext.cli import main
        sys.exit(main({argv!r}))
        """)


def test_train_without_app_extra_fails_in_one_line_naming_it():
    proc = _without("sklearn", ["train", "--epochs", "1"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "[app]" in lines[0] and "sklearn" in lines[0], proc.stderr


def test_place_milp_without_placement_extra_fails_in_one_line_naming_it():
    graph = os.path.join("workloads", "throughput-inputs", "LayerGraphs", "bert24_inference.json")
    proc = _without("highspy", ["place", graph, "--method", "milp", "--time-limit", "1"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "[placement]" in lines[0] and "highspy" in lines[0], proc.stderr


def test_place_dp_needs_no_placement_extra():
    graph = os.path.join("workloads", "throughput-inputs", "LayerGraphs", "bert24_inference.json")
    proc = _without("highspy", ["place", graph, "--json"])
    assert proc.returncode == 0, proc.stderr
    assert '"method": "dp"' in proc.stdout or '"method":"dp"' in proc.stdout


def test_train_help_works_without_app_extra():
    proc = _without("sklearn", ["train", "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--optimizer" in proc.stdout
