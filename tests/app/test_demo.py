"""`make demo` (kfac_ext/app/demo.py): the verdict comes from the figures, the table names
the first optimizer, and a run with small races writes the table and the PNG."""

from kfac_ext.app import demo


def _run(t, epochs=None, acc=0.98, loss=None):
    r = dict(
        time_to_target_s=t,
        epochs_to_target=epochs,
        final_test_accuracy=acc,
        step_ms_median=2.0,
        history=[dict(train_time_s=0.1, test_accuracy=acc, train_eval_loss=loss or 1.0)],
    )
    if loss is not None:
        r["final_train_eval_loss"] = loss
    return r


def test_verdict_and_table_follow_the_figures():
    lose = dict(sgd=_run(0.4, 7), adamw=_run(0.25, 4), kfac=_run(0.45, 5))
    win = dict(sgd=_run(None, loss=1.1), adamw=_run(None, loss=2.9), kfac=_run(1.3, 10, loss=0.1))
    assert demo.winner(lose) == "adamw" and demo.winner(win) == "kfac"
    assert demo.winner(dict(sgd=_run(None))) is None
    v = demo.verdict("digits CNN", "97 %", lose)
    assert "AdamW first" in v and "K-FAC / best other = 1.80" in v and "never" not in v
    v = demo.verdict("autoencoder", "loss 1.0", win)
    assert "K-FAC first" in v and "never reached in the budget: SGD, AdamW" in v
    table = demo.format_table(
        [
            ("digits CNN", "97 %", dict(runs=lose, seed=0)),
            ("autoencoder", "loss 1.0", dict(runs=win, seed=0, task="autoencoder")),
        ]
    )
    assert "| AdamW (first) |" in table and "| K-FAC (first) |" in table
    assert "| never |" in table and "loss 0.100" in table


def test_demo_runs_two_small_races(monkeypatch, tmp_path, capsys):
    small = ["--epochs", "2", "--batch-size", "128", "--threads", "1"]
    monkeypatch.setattr(
        demo,
        "RACES",
        (
            (
                "digits MLP",
                "test accuracy ≥ 50 %",
                ["--optimizer", "sgd,adamw,kfac", "--model", "digits-mlp", "--target-accuracy", "0.5", *small],
            ),
            (
                "digits autoencoder",
                "training loss ≤ 100",
                ["--task", "autoencoder", "--optimizer", "sgd,kfac", "--target-loss", "100", *small],
            ),
        ),
    )
    png = tmp_path / "demo.png"
    assert demo.main(["--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| digits MLP | test accuracy ≥ 50 % |" in out and "digits autoencoder to" in out
    assert png.stat().st_size > 1000


def test_milestone_reads_the_same_runs_at_an_easier_target():
    def curve(points):
        return [dict(epoch=e, train_time_s=t, train_eval_loss=loss) for e, (t, loss) in enumerate(points, 1)]

    res = dict(
        task="autoencoder",
        target_loss=0.5,
        runs=dict(
            adamw=dict(_run(None, loss=0.8), history=curve([(0.1, 3.0), (0.2, 1.4), (0.3, 0.8)])),
            kfac=dict(_run(0.9, 3, loss=0.4), history=curve([(0.3, 2.0), (0.6, 1.5), (0.9, 0.4)])),
        ),
    )
    m = demo.at_milestone(res, 1.5)
    assert m["target_loss"] == 1.5 and res["target_loss"] == 0.5  # the race itself is untouched
    assert (m["runs"]["adamw"]["epochs_to_target"], m["runs"]["adamw"]["time_to_target_s"]) == (2, 0.2)
    assert (m["runs"]["kfac"]["epochs_to_target"], m["runs"]["kfac"]["time_to_target_s"]) == (2, 0.6)  # <= counts
    assert demo.winner(m["runs"]) == "adamw" and demo.winner(res["runs"]) == "kfac"
    never = demo.at_milestone(res, 0.1)
    assert demo.winner(never["runs"]) is None and never["runs"]["kfac"]["epochs_to_target"] is None
