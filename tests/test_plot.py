import matplotlib.pyplot as plt
import pytest
import torch

from fmlab import plot
from fmlab.train import History


def test_curves_draw_train_and_validation():
    h = History(train_loss=[1.0, 0.5], train_acc=[0.6, 0.8], val_loss=[1.1, 0.7], val_acc=[0.5, 0.7],
                best_epoch=2)
    fig = plot.curves(h, title="t")
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 3 and list(acc_ax.lines[1].get_ydata()) == [0.5, 0.7]
    plt.close(fig)


def test_image_grid_marks_wrong_predictions():
    x = torch.rand(5, 1, 8, 8)
    fig = plot.image_grid(x, torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 1, 2, 3, 9]), ncols=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[-1] == "4 → 9" and len(fig.axes) == 6  # 2 rows of 3, one left empty
    colours = [ax.title.get_color() for ax in fig.axes[:5]]
    assert colours.count("crimson") == 1
    plt.close(fig)
    rgb = plot.image_grid(torch.rand(2, 3, 8, 8), labels=[0, 1], classes=["cat", "dog"])
    assert [ax.get_title() for ax in rgb.axes] == ["cat", "dog"]
    plt.close(rgb)
    with pytest.raises(ValueError, match="no images"):
        plot.image_grid(torch.zeros(0, 1, 8, 8))


def test_confusion_writes_counts():
    cm = torch.tensor([[5, 1], [0, 4]])
    fig = plot.confusion(cm, ["a", "b"])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["1", "4", "5"]  # zero cells stay blank
    plt.close(fig)
