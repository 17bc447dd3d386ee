import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fmlab
from fmlab import data, models, train
from fmlab.checks.cnn import reference_epoch  # what the CNN lab's q3 must do


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", n=400), data.load("digits", "test", n=200)


def _model(seed=0):
    fmlab.seed_everything(seed)
    return models.SeedCNN(1, 10, 8)


def test_fit_learns_and_records_history(digits):
    tr, te = digits
    model = _model()
    h = train.fit(model, tr, te, epochs=4, lr=3e-3, batch_size=32, progress=False, device="cpu")
    assert h.epochs == 4 and len(h.val_acc) == 4 and len(h.epoch_time) == 4
    assert h.train_loss[-1] < h.train_loss[0]
    ev = train.evaluate(model, te)
    assert ev.accuracy == pytest.approx(h.val_acc[-1])
    assert ev.accuracy > 0.8  # ten-way chance is 0.1
    assert ev.confusion.sum() == len(te) and ev.confusion.trace() == round(ev.accuracy * len(te))
    assert "precision" in ev.report and "recall" in ev.report


def test_fit_matches_a_hand_written_loop(digits):
    tr, _ = digits
    a, b = _model(), _model()
    train.fit(a, tr, epochs=2, lr=1e-3, batch_size=50, seed=5, progress=False, device="cpu")
    opt = torch.optim.Adam(b.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        for xb, yb in data.batches(tr.x, tr.y, 50, generator=gen):
            opt.zero_grad()
            F.cross_entropy(b(xb), yb).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_resume_after_a_crash_gives_the_same_weights(digits, tmp_path):
    tr, te = digits
    ref = _model()
    train.fit(ref, tr, te, epochs=3, batch_size=64, progress=False, device="cpu")

    calls = {"n": 0}

    def crash_in_epoch_three(model, xb, yb):
        calls["n"] += 1
        if calls["n"] == 2 * math.ceil(len(tr) / 64) + 3:
            raise KeyboardInterrupt  # the run is killed mid-way through epoch 3
        return xb

    ck = tmp_path / "run.pt"
    crashed = _model()
    with pytest.raises(KeyboardInterrupt):
        train.fit(crashed, tr, te, epochs=3, batch_size=64, progress=False, device="cpu",
                  checkpoint=ck, batch_transform=crash_in_epoch_three)
    resumed = _model(seed=123)  # a fresh process would start from other weights
    h = train.fit(resumed, tr, te, epochs=3, batch_size=64, progress=False, device="cpu",
                  checkpoint=ck)
    assert h.epochs == 3
    for pa, pb in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)


def test_resume_after_sigkill_in_a_real_process(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys, torch, fmlab
        from fmlab import data, models, train
        torch.set_num_threads(1)
        tr = data.load("digits", n=300)
        fmlab.seed_everything(0)
        model = models.SeedCNN(1, 10, 8)
        n = {"steps": 0}
        def maybe_die(m, xb, yb):
            n["steps"] += 1
            if sys.argv[2] == "kill" and n["steps"] == 17:
                os.kill(os.getpid(), signal.SIGKILL)
            return xb
        train.fit(model, tr, epochs=3, batch_size=32, progress=False, device="cpu",
                  checkpoint=sys.argv[1], batch_transform=maybe_die)
        torch.save(model.state_dict(), sys.argv[1] + ".final")
    """)
    path = tmp_path / "script.py"
    path.write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = lambda ck, mode: subprocess.run([sys.executable, str(path), str(ck), mode], env=env)
    killed = run(tmp_path / "a.pt", "kill")
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "a.pt").exists()
    assert run(tmp_path / "a.pt", "go").returncode == 0
    assert run(tmp_path / "b.pt", "go").returncode == 0
    a = torch.load(str(tmp_path / "a.pt") + ".final")
    b = torch.load(str(tmp_path / "b.pt") + ".final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_restores_the_best_epoch(digits):
    tr, te = digits
    model = _model()
    # a learning rate this large makes validation accuracy stall quickly
    h = train.fit(model, tr, te, epochs=30, lr=3e-2, batch_size=32, progress=False, device="cpu",
                  early_stopping=train.EarlyStopping(patience=2))
    assert h.stopped_early and h.epochs < 30
    assert h.best_epoch == 1 + max(range(h.epochs), key=lambda i: h.val_acc[i])
    assert train.evaluate(model, te).accuracy == pytest.approx(max(h.val_acc))


def test_nan_loss_names_epoch_and_step(digits):
    tr, _ = digits

    def poisoned(model, xb, yb):
        poisoned.calls += 1
        return xb * float("nan") if poisoned.calls == 5 else xb

    poisoned.calls = 0
    with pytest.raises(train.NonFiniteLossError, match="epoch 1, step 5.*smaller learning rate"):
        train.fit(_model(), tr, epochs=1, batch_size=32, progress=False, device="cpu",
                  batch_transform=poisoned)


def test_bad_arguments_are_explained(digits):
    tr, te = digits
    with pytest.raises(ValueError, match="pass val="):
        train.fit(_model(), tr, epochs=1, early_stopping=train.EarlyStopping(), progress=False)
    with pytest.raises(ValueError, match="'val_acc' or 'val_loss'"):
        train.EarlyStopping(metric="accuracy")
    with pytest.raises(ValueError, match="empty"):
        train.fit(_model(), tr.subset(1).__class__(tr.x[:0], tr.y[:0], tr.classes, "e"), epochs=1)


def test_evaluate_restores_train_mode_and_uses_eval_mode():
    ds = data.load("digits", n=64)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(64, 10))
    model.train()
    a, b = train.evaluate(model, ds), train.evaluate(model, ds)
    assert model.training and a.accuracy == b.accuracy  # dropout off while evaluating


def test_best_weights_come_back_even_without_an_early_stop(digits):
    """The last epoch is made the worst (a learning rate of 50 in it), patience is never used
    up, and fit must still return the weights of the best epoch."""
    tr, te = digits
    model = _model()
    steps = math.ceil(len(tr) / 32)
    blow_up = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda step: 1.0 if step < 3 * steps - 1 else 5e4)
    h = train.fit(model, tr, te, epochs=4, lr=1e-3, batch_size=32, scheduler=blow_up,
                  early_stopping=train.EarlyStopping(patience=10), progress=False, device="cpu")
    assert not h.stopped_early and h.epochs == 4
    assert h.best_epoch is not None and h.best_epoch < 4
    assert h.val_acc[-1] < max(h.val_acc) - 0.1
    kept = train.evaluate(model, te).accuracy
    assert kept == pytest.approx(h.val_acc[h.best_epoch - 1]) and kept == pytest.approx(max(h.val_acc))


def _bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_train_one_epoch_is_the_labs_function(digits):
    """Same weights and mean loss as the grader's reference for labs/01_cnn.ipynb q3, with a model handed over in eval mode,
    batch norm, a short last batch, and more batches than one finiteness window."""
    tr, _ = digits
    sizes = [7] * 30 + [3]
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    epoch = [(tr.x[a:b], tr.y[a:b]) for a, b in zip(bounds, bounds[1:])]
    a, b = _bn_net(), _bn_net()
    a.eval()
    b.eval()
    got = train.train_one_epoch(a, epoch, torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9),
                                F.cross_entropy)
    want = reference_epoch(b, epoch, torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9),
                                F.cross_entropy)
    assert type(got) is float and got == pytest.approx(want, rel=1e-6)
    assert a.training
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_train_one_epoch_counts_hits_and_rejects_no_batches(digits):
    tr, _ = digits
    model = _model()
    correct = torch.zeros((), dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: hits are the initial model's
    epoch = list(data.batches(tr.x, tr.y, 64, shuffle=False))
    train.train_one_epoch(model, epoch, opt, F.cross_entropy, correct=correct)
    with torch.no_grad():
        expected = (model(tr.x).argmax(1) == tr.y).sum()
    assert correct == expected and 0 < int(correct) < len(tr)
    with pytest.raises(ValueError, match="no batches"):
        train.train_one_epoch(model, [], opt, F.cross_entropy)


def test_mode_helpers_restore_each_submodules_own_mode():
    """A frozen batch-norm layer stays in eval mode through evaluate, eval_mode, train_mode;
    ``model.train(was_training)`` would have switched it back to train mode."""
    ds = data.load("digits", n=64)
    model = _bn_net()
    model.train()
    model[1].eval()  # frozen statistics inside a model that trains
    modes = [m.training for m in model.modules()]
    train.evaluate(model, ds)
    assert [m.training for m in model.modules()] == modes
    with train.eval_mode(model):
        assert not any(m.training for m in model.modules())
    with train.train_mode(model):
        assert all(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == modes
    with pytest.raises(RuntimeError), train.eval_mode(model):
        raise RuntimeError("restored on errors too")
    assert [m.training for m in model.modules()] == modes


def test_early_stopping_state_round_trips():
    net = nn.Linear(3, 2)
    stop = train.EarlyStopping(patience=3, metric="val_loss")
    for epoch, loss in enumerate([1.0, 0.5, 0.6], 1):
        stop.step(loss, net, epoch)
    again = train.EarlyStopping(patience=3, metric="val_loss")
    again.load_state_dict(stop.state_dict())
    assert (again.best_score, again.best_epoch, again.bad_epochs) == (0.5, 2, 1)
    assert not again.step(0.7, net, 4) and again.step(0.8, net, 5)  # patience 3 runs out at 5
    again.reset()
    assert again.best_score is None and again.bad_epochs == 0 and again.best_state is None


def test_a_checkpoint_with_other_settings_is_refused(digits, tmp_path):
    tr, _ = digits
    ck = tmp_path / "run.pt"
    train.fit(_model(), tr, epochs=1, batch_size=64, progress=False, device="cpu", checkpoint=ck)
    with pytest.raises(ValueError, match="batch_size.*delete it"):
        train.fit(_model(), tr, epochs=2, batch_size=32, progress=False, device="cpu", checkpoint=ck)
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot be read.*delete it"):
        train.fit(_model(), tr, epochs=2, batch_size=64, progress=False, device="cpu", checkpoint=ck)
