"""``fmlab bench``: the command-line face of benchmarks/."""
from fmlab import cli


def test_bench_train_runs_and_updates_only_its_section(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Notebook run times (quick profile)\n\nkept\n")
    rc = cli.main(["bench", "train", "--repeats", "1", "--n", "128", "--epochs", "1",
                   "--results", str(results)])
    assert rc == 0
    text = results.read_text()
    assert "## Notebook run times (quick profile)\n\nkept\n" in text
    assert "## fmlab.fit vs a hand-written loop" in text and "Identical final weights: True" in text
    assert "Ratio fit / hand-written" in capsys.readouterr().out


def test_unknown_benchmark_lists_the_known_ones(capsys):
    assert cli.main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "choose one of:" in err and "train" in err and "compress" in err, err
