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
    assert h.epochs == h.best_epoch + 2  # patience 2: stops at the second bad epoch in a row
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


@pytest.mark.parametrize("metric,worse", [("val_loss", [1.0, 1.0, 1.1, 1.2, 1.3]),
                                          ("val_acc", [0.5, 0.5, 0.4, 0.3, 0.2])])
def test_early_stopping_stops_after_exactly_patience_bad_epochs(metric, worse):
    """patience=2: the second epoch in a row without improvement says stop, not the third.
    A score equal to the best is no improvement; an improvement resets the count."""
    net = nn.Linear(2, 1)
    stop = train.EarlyStopping(patience=2, metric=metric)
    verdicts = [stop.step(score, net, epoch) for epoch, score in enumerate(worse[:4], 1)]
    assert verdicts == [False, False, True, True] and stop.bad_epochs == 3
    assert (stop.best_epoch, stop.best_score) == (1, worse[0])
    once = train.EarlyStopping(patience=1, metric=metric)
    assert [once.step(s, net, e) for e, s in enumerate(worse[:2], 1)] == [False, True]
    # an improvement in between starts the count again
    sign = 1 if metric == "val_loss" else -1
    scores = [1.0, 1.1, 0.9, 1.1, 1.2]
    again = train.EarlyStopping(patience=2, metric=metric)
    verdicts = [again.step(sign * s, net, e) for e, s in enumerate(scores, 1)]
    assert verdicts == [False, False, False, False, True] and again.best_epoch == 3


@pytest.mark.parametrize("metric,sign", [("val_loss", 1), ("val_acc", -1)])
def test_early_stopping_min_delta_boundary(metric, sign):
    """An improvement must beat the best by more than min_delta: by exactly min_delta (in
    binary-exact numbers) it counts as no improvement."""
    net = nn.Linear(2, 1)
    stop = train.EarlyStopping(patience=1, metric=metric, min_delta=0.25)
    assert not stop.step(sign * 1.0, net, 1)
    assert stop.step(sign * 0.75, net, 2)  # better by exactly min_delta: a bad epoch
    stop.reset()
    assert not stop.step(sign * 1.0, net, 1)
    assert not stop.step(sign * 0.5, net, 2) and stop.best_epoch == 2  # by more: better


def test_history_repr_and_last():
    h = train.History()
    assert repr(h) == "History(epochs=0, empty)" and h.last() == {} and h.epochs == 0
    h.train_loss += [1.0, 0.7, 0.5]
    h.train_acc += [0.25, 0.5, 0.75]
    assert repr(h) == "History(epochs=3, train_acc=0.7500)"
    h.val_acc += [0.5, 0.5625, 0.625]
    assert repr(h) == "History(epochs=3, train_acc=0.7500, val_acc=0.6250)"
    assert h.last() == {"train_loss": "0.5000", "train_acc": "0.7500", "val_acc": "0.6250"}


def test_evaluate_is_the_mean_over_every_batch():
    """Several batches and a short last one: the loss is the mean over all examples (with the
    loss function given), accuracy and confusion (rows: true class) count every prediction."""
    ds = data.load("digits", n=50)
    model = _model()
    with torch.no_grad():
        out = model(ds.x)
    ev = train.evaluate(model, ds, batch_size=16)
    assert ev.loss == pytest.approx(F.cross_entropy(out, ds.y).item(), rel=1e-5)
    assert torch.equal(ev.predictions, out.argmax(1)) and torch.equal(ev.targets, ds.y)
    assert ev.accuracy == pytest.approx((out.argmax(1) == ds.y).float().mean().item())
    confusion = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(ds.y, out.argmax(1)):
        confusion[t, p] += 1
    assert torch.equal(ev.confusion, confusion) and ev.classes == ds.classes
    smooth = lambda o, y, reduction: F.cross_entropy(o, y, reduction=reduction,  # noqa: E731
                                                     label_smoothing=0.5)
    ev_smooth = train.evaluate(model, ds, batch_size=16, loss_fn=smooth, device="cpu")
    assert ev_smooth.loss == pytest.approx(smooth(out, ds.y, "mean").item(), rel=1e-5)
    assert repr(ev).startswith(f"Evaluation(accuracy={ev.accuracy:.4f}, loss={ev.loss:.4f}, n=50")
    one = train.evaluate(model, ds.subset(1))
    assert one.loss == pytest.approx(F.cross_entropy(out[:1], ds.y[:1]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="cannot evaluate on an empty dataset"):
        train.evaluate(model, data.Dataset(ds.x[:0], ds.y[:0], ds.classes, "empty"))


def test_fit_records_validation_loss_learning_rate_and_time(digits):
    tr, te = digits
    model = _model()
    smooth = lambda o, y, reduction="mean": F.cross_entropy(  # noqa: E731
        o, y, reduction=reduction, label_smoothing=0.3)
    halve = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda step: 0.5 ** (step // math.ceil(len(tr) / 100)))
    h = train.fit(model, tr, te, epochs=2, lr=1e-3, batch_size=100, loss_fn=smooth,
                  scheduler=halve, progress=False, device="cpu")
    assert h.val_loss[-1] == pytest.approx(train.evaluate(model, te, loss_fn=smooth).loss, rel=1e-5)
    assert h.lr == pytest.approx([5e-4, 2.5e-4])  # the rate at the end of each epoch
    assert all(0 < t < 60 for t in h.epoch_time)
    assert 0 < h.train_acc[-1] <= 1 and h.best_epoch is None and not h.stopped_early


def test_fit_takes_an_optimizer_factory_and_rejects_anything_else(digits):
    tr, _ = digits
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    made = []
    frozen = lambda params: made.append(torch.optim.SGD(params, lr=0.0)) or made[-1]  # noqa: E731
    train.fit(model, tr, epochs=1, optimizer=frozen, progress=False, device="cpu")
    assert len(made) == 1 and made[0].param_groups[0]["params"][0] is next(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(TypeError, match="optimizer must be None, a torch.optim.Optimizer, or a"):
        train.fit(model, tr, epochs=1, optimizer="adam", progress=False, device="cpu")


def test_fit_with_zero_epochs_or_one_example(digits):
    tr, _ = digits
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    h = train.fit(model, tr, epochs=0, progress=False, device="cpu")
    assert h.epochs == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert train.fit(model, tr.subset(1), epochs=1, progress=False, device="cpu").epochs == 1
    with pytest.raises(ValueError, match="epochs must be non-negative, got -1"):
        train.fit(model, tr, epochs=-1, progress=False)


def test_checkpoint_round_trips_every_part(tmp_path):
    """Weights, optimizer, scheduler, history, the batch generator, the global random state and
    early stopping all come back; parts missing on either side are skipped."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    sched.step()
    gen = torch.Generator().manual_seed(7)
    torch.rand(3, generator=gen)
    stop = train.EarlyStopping(patience=3, metric="val_loss")
    stop.step(0.5, net, 1)
    stop.step(0.7, net, 2)
    hist = train.History(train_loss=[1.0, 0.5], train_acc=[0.1, 0.2], val_loss=[0.5, 0.7],
                         val_acc=[0.3, 0.2], epoch_time=[1.0, 1.0], lr=[0.1, 0.05], best_epoch=1)
    ck = tmp_path / "ck.pt"
    train.save_checkpoint(ck, net, opt, hist, scheduler=sched, generator=gen, early_stopping=stop,
                          batch_size=8, seed=3)
    next_global, next_gen = torch.rand(2), torch.rand(2, generator=gen)

    def fresh():
        torch.manual_seed(1)
        n = nn.Linear(3, 2)
        o = torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9)
        return n, o, torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)

    net2, opt2, sched2 = fresh()
    gen2, stop2 = torch.Generator().manual_seed(0), train.EarlyStopping(patience=3, metric="val_loss")
    h2 = train.load_checkpoint(ck, net2, opt2, scheduler=sched2, generator=gen2,
                               early_stopping=stop2, batch_size=8, seed=3)
    assert h2 == hist
    assert torch.equal(torch.rand(2), next_global) and torch.equal(torch.rand(2, generator=gen2), next_gen)
    assert sched2.last_epoch == 2 and opt2.param_groups[0]["lr"] == pytest.approx(0.025)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))
    assert all(torch.equal(opt.state[a]["momentum_buffer"], opt2.state[b]["momentum_buffer"])
               for a, b in zip(net.parameters(), net2.parameters()))
    assert (stop2.best_score, stop2.best_epoch, stop2.bad_epochs) == (0.5, 1, 1)
    assert stop2.best_state.keys() == stop.best_state.keys()
    # a run without scheduler, generator or early stopping reads the same file
    net3, opt3, _ = fresh()
    assert train.load_checkpoint(ck, net3, opt3, batch_size=8, seed=3) == hist
    # and a checkpoint written without them leaves those objects as they were
    bare = tmp_path / "bare.pt"
    train.save_checkpoint(bare, net, opt, hist)
    net4, opt4, sched4 = fresh()
    gen4, stop4 = torch.Generator().manual_seed(5), train.EarlyStopping()
    train.load_checkpoint(bare, net4, opt4, scheduler=sched4, generator=gen4, early_stopping=stop4)
    assert sched4.last_epoch == 0 and stop4.best_score is None
    assert torch.equal(gen4.get_state(), torch.Generator().manual_seed(5).get_state())
    with pytest.raises(ValueError, match=r"written with \{'batch_size': 8, 'seed': 3\}, not "
                                         r"\{'batch_size': 4, 'seed': 3\}; delete it or pass the same"):
        train.load_checkpoint(ck, net4, opt4, batch_size=4, seed=3)


def test_fit_defaults_are_adam_1e3_batches_of_64_seed_0(digits):
    tr, _ = digits
    a, b = _model(), _model()
    train.fit(a, tr, epochs=1, progress=False, device="cpu")
    train.fit(b, tr, epochs=1, optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3), batch_size=64,
              seed=0, progress=False, device="cpu")
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_fit_uses_the_device_it_is_given(digits, monkeypatch):
    """device="cpu" wins over FMLAB_DEVICE (here a device this machine may lack)."""
    tr, te = digits
    monkeypatch.setenv("FMLAB_DEVICE", "meta")
    model = _model()
    h = train.fit(model, tr.subset(64), te.subset(32), epochs=1, progress=False, device="cpu")
    assert h.epochs == 1 and next(model.parameters()).device.type == "cpu"


def test_amp_is_bfloat16_on_cuda_only(digits):
    """On the CPU amp=True changes nothing: autocast is for CUDA."""
    tr, _ = digits
    a, b = _model(), _model()
    train.fit(a, tr.subset(128), epochs=1, amp=True, progress=False, device="cpu")
    train.fit(b, tr.subset(128), epochs=1, amp=False, progress=False, device="cpu")
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_nan_in_a_later_epoch_names_that_epoch(digits):
    tr, _ = digits
    steps = math.ceil(len(tr) / 100)

    def poisoned(model, xb, yb):
        poisoned.calls += 1
        return xb * float("nan") if poisoned.calls == steps + 2 else xb

    poisoned.calls = 0
    with pytest.raises(train.NonFiniteLossError, match="at epoch 2, step 2\\. Try a smaller"):
        train.fit(_model(), tr, epochs=2, batch_size=100, progress=False, device="cpu",
                  batch_transform=poisoned)


def test_resume_keeps_early_stopping_state(digits, tmp_path):
    """A run resumed from its checkpoint remembers the best epoch it had seen, so it still
    ends with the best weights (the last epochs are made bad by a huge learning rate)."""
    tr, te = digits
    steps = math.ceil(len(tr) / 64)
    blow_up = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda step: 1.0 if step < 2 * steps else 5e4)
    run = dict(epochs=4, lr=3e-3, batch_size=64, scheduler=blow_up, progress=False, device="cpu")
    ref = _model()
    h_ref = train.fit(ref, tr, te, early_stopping=train.EarlyStopping(patience=5), **run)
    ck = tmp_path / "es.pt"
    first = _model()
    train.fit(first, tr, te, early_stopping=train.EarlyStopping(patience=5), checkpoint=ck,
              **dict(run, epochs=2))
    resumed, stop = _model(seed=9), train.EarlyStopping(patience=5)
    h = train.fit(resumed, tr, te, early_stopping=stop, checkpoint=ck, **run)
    assert h.best_epoch == h_ref.best_epoch <= 2 and stop.best_epoch == h_ref.best_epoch
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), resumed.parameters()))


def test_fit_argument_errors_say_exactly_what(digits, tmp_path):
    tr, te = digits
    with pytest.raises(ValueError, match="^early stopping watches a validation metric: pass val=...$"):
        train.fit(_model(), tr, epochs=1, early_stopping=train.EarlyStopping(), progress=False)
    with pytest.raises(ValueError, match="^the training set is empty$"):
        train.fit(_model(), data.Dataset(tr.x[:0], tr.y[:0], tr.classes, "e"), epochs=1)
    with pytest.raises(ValueError, match="^early stopping watches 'val_acc' or 'val_loss', not 'acc'$"):
        train.EarlyStopping(metric="acc")
    with pytest.raises(ValueError, match="^train_one_epoch got no batches: pass a non-empty list"):
        train.train_one_epoch(_model(), [], torch.optim.SGD(_model().parameters(), lr=0.1),
                              F.cross_entropy)
    ck = tmp_path / "seed.pt"
    train.fit(_model(), tr.subset(64), epochs=1, progress=False, device="cpu", checkpoint=ck, seed=1)
    with pytest.raises(ValueError, match="'seed': 1}, not {'batch_size': 64, 'seed': 2}"):
        train.fit(_model(), tr.subset(64), epochs=2, progress=False, device="cpu", checkpoint=ck, seed=2)


def test_train_one_epoch_hands_the_transform_model_and_labels_and_autocasts():
    torch.manual_seed(0)
    model, x, y = nn.Linear(4, 3), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    seen = []

    def transform(m, xb, yb):
        seen.append((m, yb))
        return xb

    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    train.train_one_epoch(model, [(x, y)], sgd, F.cross_entropy, batch_transform=transform)
    assert seen[0][0] is model and torch.equal(seen[0][1], y)
    dtypes = []
    model.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    train.train_one_epoch(model, [(x, y)], sgd, F.cross_entropy, autocast=torch.bfloat16)
    train.train_one_epoch(model, [(x, y)], sgd, F.cross_entropy)
    assert dtypes == [torch.bfloat16, torch.float32]  # autocast works on the CPU too
    with pytest.raises(train.NonFiniteLossError, match="at epoch 1, step 1"):  # the default epoch
        train.train_one_epoch(model, [(x * float("inf"), y)], sgd, F.cross_entropy)


def test_losses_and_hits_over_several_finiteness_windows():
    """More batches than one window (train.CHECK_EVERY): every window's hits are counted, the
    mean loss is over all batches (also when the last window is exactly full), and a bad loss
    in a later epoch's first window names that epoch and step."""
    torch.manual_seed(0)
    model, sgd = nn.Linear(4, 3), None
    x, y = torch.randn(8 * 2 * train.CHECK_EVERY, 4), torch.randint(0, 3, (8 * 2 * train.CHECK_EVERY,))
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: every batch sees the same model
    for n_batches in (2 * train.CHECK_EVERY, train.CHECK_EVERY + 5):
        epoch = [(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]) for i in range(n_batches)]
        correct = torch.zeros((), dtype=torch.long)
        got = train.train_one_epoch(model, epoch, sgd, F.cross_entropy, correct=correct)
        with torch.no_grad():
            out = model(x[:8 * n_batches])
        assert got == pytest.approx(F.cross_entropy(out, y[:8 * n_batches]).item(), rel=1e-5)
        assert int(correct) == int((out.argmax(1) == y[:8 * n_batches]).sum())
    bad = [(x[:8], y[:8])] * (train.CHECK_EVERY + 5)
    bad[train.CHECK_EVERY - 3] = (x[:8] * float("nan"), y[:8])
    with pytest.raises(train.NonFiniteLossError, match=f"at epoch 3, step {train.CHECK_EVERY - 2}\\."):
        train.train_one_epoch(model, bad, sgd, F.cross_entropy, epoch=3)


def test_fit_without_a_device_uses_the_default_device(digits, monkeypatch):
    tr, _ = digits
    monkeypatch.setenv("FMLAB_DEVICE", "cpu")
    assert train.fit(_model(), tr.subset(32), epochs=1, progress=False).epochs == 1
