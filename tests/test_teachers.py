"""Teacher-side methods: the MCMI fine-tune and multi-teacher KD with MTARD's entropy balance.

Checked against hand-computed values and closed-form gradients, never against the code's
own output; plus the config errors and the fine-tuning step end to end on the tiny study.
"""
import copy
import json
import math

import numpy as np
import pytest
import torch

from kdlib.config import ConfigError, parse_config
from kdlib.losses import multi_teacher_kd
from kdlib.mcmi import FinetuneSettings, MCMIFinetune, class_centroids
from tests.conftest import TINY_STUDY
from tests.helpers.methods import build


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a trainable table, so d loss / d logits is its gradient."""

    def __init__(self, logits):
        super().__init__()
        self.z = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float64).clone())

    def forward(self, x):
        return self.z, None


def test_class_centroids_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([0, 0]) = [1/2, 1/2]; softmax([ln 4, 0]) = [4/5, 1/5]
    logits = torch.tensor([[0.0, math.log(3)], [0.0, 0.0], [math.log(4), 0.0]])
    q = class_centroids(logits, torch.tensor([1, 1, 0]), num_classes=3)
    expected = [[0.8, 0.2], [0.375, 0.625], [0.5, 0.5]]  # class 2 has no sample: uniform
    assert q.shape == (3, 2) and torch.allclose(q, torch.tensor(expected), atol=1e-6)


def test_mcmi_objective_value_and_gradient_by_hand():
    # two samples of class 1, two classes; P = [1/4, 3/4] and [1/2, 1/2]; centroid Q_1 = [3/8, 5/8]
    z = [[0.0, math.log(3)], [0.0, 0.0]]
    target = torch.tensor([1, 1])
    lam = -0.25
    method = MCMIFinetune(FinetuneSettings(lam=lam), ds=None)
    method.centroids = torch.tensor([[0.5, 0.5], [0.375, 0.625]], dtype=torch.float64)
    model = FixedLogits(z)
    _, terms = method.forward_train(model, None, target, None, epoch=0)

    p = np.array([[0.25, 0.75], [0.5, 0.5]])
    q = np.array([0.375, 0.625])
    ce = -np.log(p[:, 1])
    kl = (p * np.log(p / q)).sum(1)
    assert terms["ce"].item() == pytest.approx(ce.mean(), rel=1e-12)
    assert terms["mcmi"].item() == pytest.approx(lam * kl.mean(), rel=1e-12)

    sum(terms.values()).backward()
    # d CE / dz = p - onehot(y); d KL(p || q) / dz_j = p_j (log(p_j / q_j) - KL); both / N
    onehot = np.array([[0.0, 1.0], [0.0, 1.0]])
    grad = (p - onehot + lam * p * (np.log(p / q) - kl[:, None])) / 2
    assert np.allclose(model.z.grad.numpy(), grad, atol=1e-12)


def test_mcmi_none_is_plain_ce():
    method = MCMIFinetune(FinetuneSettings(regularizer="none"), ds=None)
    _, terms = method.forward_train(FixedLogits([[1.0, 2.0, 0.0]]), None, torch.tensor([2]), None, 0)
    assert set(terms) == {"ce"}


def test_start_epoch_refreshes_the_centroids_from_the_current_model(tiny_ds):
    from kdlib.models import build_model
    from kdlib.train import predict

    torch.manual_seed(0)
    model = build_model("mlp", tiny_ds.num_classes, tiny_ds.num_channels, tiny_ds.image_size)
    method = MCMIFinetune(FinetuneSettings(), tiny_ds)
    method.start_epoch(model, 0)
    probs = torch.softmax(predict(model, tiny_ds.x_train, tiny_ds).double(), 1)
    for c in range(tiny_ds.num_classes):
        assert torch.allclose(method.centroids[c].double(), probs[tiny_ds.y_train == c].mean(0), atol=1e-6)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    before = method.centroids.clone()
    method.start_epoch(model, 1)
    assert not torch.allclose(before, method.centroids)


def binary_teacher(a, n=3):
    """n rows of logits [0, a]: its softmax at T is [1 - sigmoid(a/T), sigmoid(a/T)]."""
    return torch.tensor([[0.0, a]] * n, dtype=torch.float64)


def test_entropy_balance_by_hand():
    # binary entropy depends on |a| / T only, so teacher [0, 4] reaches the entropy of
    # [0, 2] at T = 1 exactly at T = 2; the softest teacher keeps the base temperature
    taus = multi_teacher_kd.entropy_balanced_temperatures(torch.stack([binary_teacher(4.0), binary_teacher(2.0)]), 1.0, 10.0)
    assert taus.tolist() == pytest.approx([2.0, 1.0], abs=1e-9)
    # base 1.5: [0, 3] matches [0, 1.5]/1.5 at T = 3
    taus = multi_teacher_kd.entropy_balanced_temperatures(torch.stack([binary_teacher(1.5), binary_teacher(3.0)]), 1.5, 10.0)
    assert taus.tolist() == pytest.approx([1.5, 3.0], abs=1e-9)
    # out of reach: [0, 40] would need T = 20; it stops at max_temperature
    taus = multi_teacher_kd.entropy_balanced_temperatures(torch.stack([binary_teacher(40.0), binary_teacher(2.0)]), 1.0, 10.0)
    assert taus.tolist() == pytest.approx([10.0, 1.0], abs=1e-9)


def test_entropy_balance_equalises_mean_entropy():
    torch.manual_seed(0)
    teachers = torch.randn(3, 16, 10, dtype=torch.float64) * torch.tensor([1.0, 3.0, 6.0]).view(3, 1, 1)
    taus = multi_teacher_kd.entropy_balanced_temperatures(teachers, 1.0, 10.0)

    def entropy(t, tau):  # numpy, independent of the code under test
        z = t.numpy() / tau
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return float(-(p * np.log(p)).sum(1).mean())

    target = max(entropy(t, 1.0) for t in teachers)
    assert [entropy(t, tau) for t, tau in zip(teachers, taus.tolist())] == pytest.approx([target] * 3, abs=1e-9)
    assert taus[0].item() == 1.0 and 1.0 < taus[1].item() < taus[2].item()


def test_multi_teacher_kd_loss_value_and_gradient_by_hand():
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)  # student softmax [1/2, 1/2]
    teachers = torch.stack([binary_teacher(math.log(3), 1), binary_teacher(2 * math.log(4), 1)])
    taus = torch.tensor([1.0, 2.0], dtype=torch.float64)  # targets [1/4, 3/4] and [1/5, 4/5]
    loss = multi_teacher_kd.multi_teacher_kd_loss(s, teachers, taus)
    p1, p2 = np.array([0.25, 0.75]), np.array([0.2, 0.8])
    kl = lambda p: float((p * np.log(p / 0.5)).sum())  # noqa: E731
    assert loss.item() == pytest.approx((kl(p1) + kl(p2)) / 2, rel=1e-12)
    loss.backward()
    # d KL(p || softmax(s)) / ds = softmax(s) - p, averaged over the teachers
    assert np.allclose(s.grad.numpy(), [0.5 - (p1 + p2) / 2], atol=1e-12)


def test_multi_teacher_kd_method_terms():
    method = build("mt", {"method": "multi_teacher_kd", "teachers": ["teacher", "other"]})
    assert method.teacher_names() == ["teacher", "other"]
    teachers = torch.stack([binary_teacher(4.0, 2), binary_teacher(2.0, 2)]).float()
    model = FixedLogits([[0.5, -0.5], [0.0, 1.0]])
    _, terms = method.forward_train(model, None, torch.tensor([0, 1]), teachers, 0)
    taus = torch.tensor([2.0, 1.0], dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(model.z, torch.tensor([0, 1]))
    assert terms["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-9)
    expected = 0.9 * multi_teacher_kd.multi_teacher_kd_loss(model.z, teachers.double(), taus)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-6)


def study(**changes):
    raw = copy.deepcopy(TINY_STUDY)
    raw["teachers"] = {"second": {"arch": "mlp", "seed": 1, "schedule": {"epochs": 1, "batch_size": 128}}}
    raw["finetuned_teachers"] = {"teacher_mcmi": {"lam": -0.5, "schedule": {"epochs": 2, "batch_size": 128, "lr": 0.01}}}
    raw["students"]["methods"] = ["kd", "kd_mcmi", "mt"]
    raw["methods"] = {
        "kd": {},
        "kd_mcmi": {"method": "kd", "teacher": "teacher_mcmi"},
        "mt": {"method": "multi_teacher_kd", "teachers": ["teacher", "second", "teacher_mcmi"]},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return raw


def test_study_declares_teachers():
    cfg = parse_config(study())
    assert cfg.teacher_names() == ["teacher", "second", "teacher_mcmi"]
    assert cfg.method_settings("kd_mcmi").teacher == "teacher_mcmi"
    # the teacher choice is not a loss setting: the student's key holds the chosen cache instead
    assert "teacher" not in cfg.method_settings("kd_mcmi").model_dump()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"methods__kd_mcmi": {"method": "kd", "teacher": "mcmi"}},
         "methods.kd_mcmi.teacher: unknown teacher 'mcmi'; declared teachers: teacher, second, teacher_mcmi"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["teacher", "third"]}},
         "methods.mt.teachers: unknown teacher 'third'"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["teacher"]}}, "methods.mt.teachers: List should have at least 2 items"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["second", "second"]}}, "lists a teacher twice"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["teacher", "second"], "teacher": "second"}},
         "methods.mt.teacher: method 'multi_teacher_kd' names its teachers in `teachers`"),
        ({"students__methods": ["ce"], "methods": {"ce": {"teacher": "second"}}}, "methods.ce.teacher: method 'ce' reads no logit cache"),
        ({"teachers": {"teacher": {"schedule": {"epochs": 1}}}}, "teachers.teacher: a teacher name is letters"),
        ({"teachers": {"a b": {"schedule": {"epochs": 1}}}}, "teachers.a b: a teacher name is letters"),
        ({"teachers": {"second": {"arch": "nope", "schedule": {"epochs": 1}}}}, "teachers.second.arch: unknown arch 'nope'"),
        ({"finetuned_teachers": {"second": {}}}, "finetuned_teachers: ['second'] also declared under teachers"),
        ({"finetuned_teachers": {"teacher_mcmi": {"lam": 0.5}}}, "finetuned_teachers.teacher_mcmi.lam: Input should be less than 0"),
        ({"finetuned_teachers": {"teacher_mcmi": {"regularizer": "none", "lam": -1}}},
         "lam is the weight of the MCMI term: it needs regularizer: mcmi"),
        ({"finetuned_teachers": {"teacher_mcmi": {"regularizer": "cmi"}}}, "finetuned_teachers.teacher_mcmi.regularizer"),
    ],
)
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ConfigError) as err:
        parse_config(study(**changes))
    assert message in str(err.value)


def test_finetune_step_end_to_end(tmp_path):
    """finetune_teacher on the tiny study: starts from the teacher, trains CE + MCMI, caches."""
    from kdlib import artifacts
    from tasks import cache_logits, finetune_teacher, prepare_data, train_teacher

    raw = study()
    raw["runtime"]["store"] = str(tmp_path / "store")
    cfg = parse_config(raw)
    data = prepare_data.run(cfg, tmp_path / "data")
    teacher = train_teacher.run(cfg, data, tmp_path / "teacher")
    tuned = finetune_teacher.run(cfg, "teacher_mcmi", data, teacher, tmp_path / "tuned")
    assert artifacts.is_complete(tmp_path / "tuned")
    meta = tuned["meta"]
    assert meta["regularizer"] == "mcmi" and meta["lam"] == -0.5 and meta["base_key"] == teacher["key"]
    history = json.loads((tmp_path / "tuned" / "history.json").read_text())
    assert len(history) == 2 and all(h["loss/mcmi"] < 0 for h in history)
    base = train_teacher.load_teacher(cfg, data, teacher).state_dict()
    after = train_teacher.load_teacher(cfg, data, tuned).state_dict()
    assert any(not torch.equal(base[k], after[k]) for k in base)
    # the key holds every setting that changes the artifact, and not the entry's name
    k = finetune_teacher.key(cfg, "teacher_mcmi", data, teacher)
    renamed = study(students__methods=["kd"])
    renamed["finetuned_teachers"] = {"other": renamed["finetuned_teachers"]["teacher_mcmi"]}
    assert finetune_teacher.key(parse_config(renamed), "other", data, teacher) == k
    settings = raw["finetuned_teachers"]["teacher_mcmi"]
    for changed in ({**settings, "lam": -1.0}, {**settings, "seed": 1}, {"regularizer": "none", "schedule": settings["schedule"]}):
        other = parse_config(study(finetuned_teachers={"teacher_mcmi": changed}))
        assert finetune_teacher.key(other, "teacher_mcmi", data, teacher) != k, changed
    logits = cache_logits.run(cfg, data, tuned, tmp_path / "logits")
    assert logits["meta"]["teacher_key"] == tuned["key"]


def test_extra_and_finetuned_teachers_are_shape_checked():
    """vgg8 ends in a 1x1 map: batch norm cannot train it on a batch of 1."""
    tiny_batch = {"epochs": 1, "batch_size": 1}
    with pytest.raises(ConfigError, match=r"teachers\.second\.schedule\.batch_size: 1 cannot train vgg8"):
        parse_config(study(teachers={"second": {"arch": "vgg8", "schedule": tiny_batch}}))
    with pytest.raises(ConfigError, match=r"finetuned_teachers\.teacher_mcmi\.schedule\.batch_size: 1 cannot train vgg8"):
        parse_config(study(teacher__arch="vgg8", finetuned_teachers={"teacher_mcmi": {"schedule": tiny_batch}}))


def test_multi_teacher_kd_loss_gradcheck_and_large_logits():
    torch.manual_seed(1)
    teachers = torch.randn(2, 4, 5, dtype=torch.float64) * 3
    taus = torch.tensor([1.0, 2.5], dtype=torch.float64)
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: multi_teacher_kd.multi_teacher_kd_loss(x, teachers, taus), (s,))
    # |logit| = 100 in fp32: finite temperatures, loss and gradient
    big = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 50.0]])
    stack = torch.stack([big, -big])
    taus = multi_teacher_kd.entropy_balanced_temperatures(stack, 1.0, 10.0)
    assert torch.isfinite(taus).all() and (taus >= 1.0).all() and (taus <= 10.0).all()
    s = (big * 0.5).requires_grad_()
    loss = multi_teacher_kd.multi_teacher_kd_loss(s, stack, taus)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_bad_teacher_stacks_are_refused():
    with pytest.raises(ValueError, match=r"teachers must be a floating-point tensor of shape \(K, N, C\)"):
        multi_teacher_kd.entropy_balanced_temperatures(torch.zeros(4, 3), 1.0, 10.0)
    with pytest.raises(ValueError, match=r"max_temperature \(0.5\) must be >= temperature \(1.0\)"):
        multi_teacher_kd.entropy_balanced_temperatures(torch.zeros(2, 4, 3), 1.0, 0.5)
    with pytest.raises(ValueError, match="does not match student shape"):
        multi_teacher_kd.multi_teacher_kd_loss(torch.zeros(4, 3), torch.zeros(2, 4, 5), torch.ones(2))


def test_mlflow_shows_the_teacher_of_a_one_teacher_entry():
    from tasks.tracking import _teacher_param

    cfg = parse_config(study())
    assert [_teacher_param(cfg, m) for m in cfg.students.methods] == [
        {"settings.teacher": "teacher"}, {"settings.teacher": "teacher_mcmi"}, {},  # mt: settings.teachers
    ]


def test_mcmi_finetune_resumes_to_identical_weights(tiny_ds, tmp_path):
    """The centroids are a function of the weights at an epoch's start, so a run stopped after
    epoch 1 and resumed from its checkpoint ends with the uninterrupted run's weights."""
    from kdlib.config import AugmentConfig, ScheduleConfig
    from kdlib.models import build_model
    from kdlib.train import fit

    schedule = ScheduleConfig(epochs=2, batch_size=8, lr=0.05)

    class Stop(Exception):
        pass

    class StopAtEpoch1(MCMIFinetune):
        def start_epoch(self, model, epoch):
            if epoch == 1:
                raise Stop
            super().start_epoch(model, epoch)

    def run(method_cls, checkpoint):
        torch.manual_seed(0)
        model = build_model("mlp", tiny_ds.num_classes, tiny_ds.num_channels, tiny_ds.image_size)
        method = method_cls(FinetuneSettings(lam=-0.5), tiny_ds)
        fit(model, method, tiny_ds, schedule, 0, AugmentConfig(), checkpoint=checkpoint, log=lambda _: None)
        return model.state_dict()

    whole = run(MCMIFinetune, None)
    with pytest.raises(Stop):
        run(StopAtEpoch1, tmp_path / "ckpt.pt")
    resumed = run(MCMIFinetune, tmp_path / "ckpt.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_student_key_holds_the_caches_it_reads():
    from tasks import train_student

    cfg = parse_config(study())
    data = {"files": {"dataset.pt": "d"}}
    cache = {name: {"files": {"views.pt": name}} for name in ("teacher", "second", "teacher_mcmi")}
    assert train_student.student_teachers(cfg, "mt") == ["teacher", "second", "teacher_mcmi"]
    key = lambda method, logits: train_student.key(cfg, method, 0, data, logits)  # noqa: E731
    assert key("kd", cache["teacher"]) != key("kd", cache["teacher_mcmi"])
    stacks = [cache["teacher"], cache["second"], cache["teacher_mcmi"]]
    assert key("mt", stacks) != key("mt", stacks[::-1]) != key("mt", stacks[:2])


def test_a_student_that_reads_no_cache_has_no_teacher_in_its_key():
    """ce, zloss, ldr, uskd read no logit cache: a new teacher (a changed logits manifest)
    must not retrain them, only re-evaluate them; a kd student's key follows the cache."""
    from tasks import train_student

    raw = study()
    raw["methods"].update({"ce": {}, "uskd": {}})
    cfg = parse_config(raw)
    data = {"files": {"dataset.pt": "d"}}
    old, new = {"files": {"views.pt": "old teacher"}}, {"files": {"views.pt": "new teacher"}}
    key = lambda method, logits: train_student.key(cfg, method, 0, data, logits)  # noqa: E731
    for method in ("ce", "uskd"):
        assert not train_student.reads_cache(cfg, method) and train_student.student_teachers(cfg, method) == []
        assert key(method, old) == key(method, new) == key(method, None)
    assert train_student.reads_cache(cfg, "kd") and key("kd", old) != key("kd", new)
    with pytest.raises(ValueError, match="no cache_logits manifest"):
        train_student.run(cfg, "kd", 0, data, None, "unused")
