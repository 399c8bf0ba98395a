"""Stage 04's full-model methods against mergekit 0.1.5's own kernels, on random tensors.

linear, slerp, task_arithmetic and ties are deterministic: merge_tensor must give mergekit's values
element for element (here: bit for bit in float32), with mergekit's defaults and with each of its
parameters set. DARE drops at random: given the same masks (mergekit's torch.bernoulli made to return
stage 04's draws) it must give mergekit's values too, and with mergekit's own draws the same merge in
distribution (kept share, the L1 rescale, the size of the update). peft_* must stay peft's (they differ).
"""

import math

import pytest
import torch
from mergekit import sparsify
from mergekit.merge_methods import registry
from mergekit.merge_methods.base import TensorGroup

from platypus_utils.merge import arithmetic
from platypus_utils.merge.arithmetic import Options, merge_tensor
from platypus_utils.merge.io import ModelMergeSpec

SHAPE = (96, 64)
WEIGHTS = [0.7, 0.3, -0.2]  # a negative weight: the weighted sign election differs from peft's count


def random_models(count=3, seed=0, shape=SHAPE, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return base, [base + scale * torch.randn(shape, generator=gen) for _ in range(count)]


def theirs(method, base, models, weights, density=None, **shared):
    """mergekit's kernel for `method` on one tensor (base first, as its task-vector methods take it)."""
    kernel = registry.get(method)
    if method == "slerp":
        group = TensorGroup.from_tensors(models, base_index=0)
        return kernel([group], parameters={"t": weights[1] / sum(weights)})[0]
    if method == "linear":
        return kernel([TensorGroup.from_tensors(models)], parameters={"weight": dict(enumerate(weights)), **shared})[0]
    parameters = {"weight": {i + 1: w for i, w in enumerate(weights)}, **shared}
    if density is not None:
        parameters["density"] = {i + 1: density for i in range(len(models))}
    return kernel([TensorGroup.from_tensors([base, *models], base_index=0)], parameters=parameters)[0]


def ours(method, base, models, weights, density=None, seed=0, **shared):
    options = Options.of(method, shared.get("normalize"), shared.get("rescale"), shared.get("lambda", 1.0))
    uses_base = method not in ("linear", "slerp")
    out, _ = merge_tensor(
        method, models, base if uses_base else None, weights, density, "total", seed, "w", options=options
    )
    return out


DETERMINISTIC = [
    ("linear", {}),
    ("linear", {"normalize": False}),
    ("slerp", {}),
    ("task_arithmetic", {}),
    ("task_arithmetic", {"normalize": True, "lambda": 0.5}),
    ("ties", {}),
    ("ties", {"normalize": False, "int8_mask": True}),
    ("ties", {"rescale": True, "lambda": 1.5}),
]


@pytest.mark.parametrize(
    "method, shared", DETERMINISTIC, ids=[f"{m}-{'-'.join(s) or 'defaults'}" for m, s in DETERMINISTIC]
)
def test_deterministic_methods_equal_mergekit_element_for_element(monkeypatch, method, shared):
    monkeypatch.setattr(arithmetic, "CHUNK", 1000)  # stage 04 works in chunks; mergekit on the whole tensor
    base, models = random_models()
    weights = [0.7, 0.3] if method == "slerp" else [abs(w) for w in WEIGHTS] if method == "linear" else WEIGHTS
    models = models[:2] if method == "slerp" else models
    density = 0.3 if method == "ties" else None
    expected = theirs(method, base, models, weights, density, **shared)
    got = ours(method, base, models, weights, density, **shared)
    assert got.dtype == expected.dtype == torch.float32
    assert (expected - base).abs().max() > 0.05  # a merge that moved: the comparison has something to see
    if method == "slerp" or shared.get("rescale"):
        # the angle, the L1 norms: sums over the chunks (float64) vs mergekit's float32 sums, a few ulps
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
    else:  # the same operations in the same order: bit for bit
        assert float((got - expected).abs().max()) == 0.0, method


def test_ties_is_mergekits_not_pefts():
    """mergekit's ties elects the sign from the weighted task vectors and divides by the agreeing weights;
    peft's (peft_ties) from the unweighted ones, dividing by their count: with these weights they differ."""
    base, models = random_models()
    mergekit_ties = theirs("ties", base, models, WEIGHTS, 0.3)
    assert float((ours("ties", base, models, WEIGHTS, 0.3) - mergekit_ties).abs().max()) == 0.0
    peft = ours("peft_ties", base, models, WEIGHTS, 0.3)
    assert (peft != mergekit_ties).double().mean() > 0.1


def same_masks(monkeypatch, shape, count, density, seed):
    """Make mergekit's DARE draw stage 04's masks: its torch.bernoulli returns them, one per model, in order."""
    n = math.prod(shape)
    masks = iter(arithmetic.dare_masks(n, count, density, arithmetic.chunk_seed(seed, "w", 0)))
    monkeypatch.setattr(sparsify.torch, "bernoulli", lambda probabilities: next(masks).reshape(shape).float())


DARE = [
    ("dare_linear", {}),
    ("dare_linear", {"normalize": True, "rescale": False}),
    ("dare_ties", {}),
    ("dare_ties", {"normalize": True, "int8_mask": True, "lambda": 0.8}),
]


@pytest.mark.parametrize("method, shared", DARE, ids=[f"{m}-{'-'.join(s) or 'defaults'}" for m, s in DARE])
def test_dare_with_the_same_masks_equals_mergekit(monkeypatch, method, shared):
    base, models = random_models()
    got = ours(method, base, models, WEIGHTS, 0.4, seed=3, **shared)
    same_masks(monkeypatch, SHAPE, len(models), 0.4, seed=3)
    expected = theirs(method, base, models, WEIGHTS, 0.4, **shared)
    assert float((got - expected).abs().max()) <= 1e-6  # the L1 norms are summed in another order
    assert (got - base).abs().max() > 0.05


def assert_dare_alike(ours_t: dict, theirs_t: dict, base: dict, density: float) -> dict:
    """Two DARE merges of the same inputs with different masks: the same share of entries changed
    (within 6 binomial standard deviations) and the same size of update (L1, within 5%)."""
    changed, l1 = [0, 0], [0.0, 0.0]
    entries = 0
    for name, b in base.items():
        deltas = [t[name].double() - b.double() for t in (ours_t, theirs_t)]
        if not any(bool(d.any()) for d in deltas):
            continue
        entries += b.numel()
        for i, d in enumerate(deltas):
            changed[i] += int((d != 0).sum())
            l1[i] += float(d.abs().sum())
    assert entries > 0
    shares = [c / entries for c in changed]
    spread = 6 * math.sqrt(0.25 / entries) + 1e-3
    assert abs(shares[0] - shares[1]) <= spread, shares
    assert l1[1] > 0 and abs(l1[0] / l1[1] - 1) < 0.05, l1
    return {"shares": shares, "l1": l1}


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_agrees_with_mergekit_in_distribution(method):
    """With mergekit's own draws: each merge keeps about `density` of each task vector, rescales what it
    keeps to the vector's L1 norm (exactly, given the mask it drew), and the merges are alike in size."""
    shape, density = (256, 256), 0.3
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(shape, generator=gen)
    half = shape[0] // 2  # model 0 changes the top half only, model 1 the bottom: each kept mask is visible
    vectors = [torch.zeros(shape), torch.zeros(shape)]
    vectors[0][:half] = 0.1 * torch.randn(half, shape[1], generator=gen)
    vectors[1][half:] = 0.1 * torch.randn(shape[0] - half, shape[1], generator=gen)
    models = [base + v for v in vectors]
    torch.manual_seed(0)
    results = {"ours": ours(method, base, models, [0.6, 0.4], density, seed=1), "mergekit": None}
    results["mergekit"] = theirs(method, base, models, [0.6, 0.4], density)
    sigma = math.sqrt(density * (1 - density) / (half * shape[1]))
    for who, merged in results.items():
        delta = merged - base
        for i, (rows, w) in enumerate(((slice(0, half), 0.6), (slice(half, None), 0.4))):
            d, got = (models[i] - base)[rows], delta[rows]
            kept = got != 0
            assert abs(float(kept.double().mean()) - density) < 6 * sigma, (who, i)
            scale = float(d.abs().sum() / d[kept].abs().sum())  # mergekit's rescale, given this mask
            torch.testing.assert_close(got[kept], w * scale * d[kept], atol=1e-6, rtol=1e-5)
    assert_dare_alike({"w": results["ours"]}, {"w": results["mergekit"]}, {"w": base}, density)


def test_peft_dare_differs_from_mergekits_in_scale():
    """peft_dare_ties divides by the number of agreeing models (and rescales by 1/density); mergekit's
    dare_ties (normalize false) sums: the updates differ in size, as the issue measured."""
    base, models = random_models(count=2, shape=(128, 128))
    l1 = {
        m: float((ours(m, base, models, [1.0, 1.0], 0.5) - base).abs().sum()) for m in ("dare_ties", "peft_dare_ties")
    }
    assert l1["peft_dare_ties"] < 0.9 * l1["dare_ties"]


# ---------------------------------------------------------------- mergekit configs in a profile
def load_with_merges(tmp_path, merges, files=None):
    """A profile file (in a project folder) with merge.model_merges = merges; files: {name: mapping} written as .yml."""
    import yaml

    from platypus_utils.config import load_profile

    (tmp_path / "pyproject.toml").write_text("")  # the project root: relative paths start here
    for name, mapping in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(yaml.safe_dump(mapping))
    path = tmp_path / "params" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    merge_section = {"merge_into_base": False, "model_merges": merges}
    path.write_text(yaml.safe_dump({"name": "p", "merge": merge_section, "evaluate": {"variants": ["base"]}}))
    return load_profile(path)


def test_a_merge_given_as_a_mergekit_config_is_translated(tmp_path):
    """Inline or from a .yml: mergekit's keys become the project's (the base left out of the task vectors,
    top-level parameters given to each model, density's default 1.0, slerp's t as weights, out_dtype as
    the stored dtype, ./paths from the .yml's folder); the result means what mergekit means."""
    ties = {
        "merge_method": "ties",
        "base_model": "org/base",
        "models": [
            {"model": "org/base"},
            {"model": "org/a", "parameters": {"weight": 0.7}},
            {"model": "org/b", "parameters": {"weight": 0.3, "density": 0.4}},
        ],
        "parameters": {"density": 0.4, "normalize": False, "int8_mask": True, "lambda": 0.9},
        "dtype": "bfloat16",
    }
    slerp = {
        "merge_method": "slerp",
        "base_model": "./ft1",
        "models": [{"model": "./ft1"}, {"model": "./ft2"}],
        "parameters": {"t": 0.25},
        "dtype": "float32",
        "out_dtype": "float16",
    }
    dare = {"merge_method": "dare_linear", "base_model": "b", "models": ["a", "c"], "parameters": {"weight": 1}}
    merges = [
        {"name": "soup", "mergekit": ties},
        {"name": "sph", "mergekit": "recipes/slerp.yml"},
        {"name": "drop", "mergekit": dare},
    ]
    profile = load_with_merges(tmp_path, merges, {"recipes/slerp.yml": slerp})
    got = {m.name: m for m in profile.merge.model_merges}
    assert got["soup"].model_dump(exclude={"name"}) == {
        "method": "ties",
        "models": ["org/a", "org/b"],
        "weights": [0.7, 0.3],
        "density": 0.4,
        "majority_sign_method": "total",
        "base": "org/base",
        "normalize": False,
        "rescale": None,
        "lambda_": 0.9,
        "int8_mask": True,
        "dtype": "bfloat16",
    }
    recipes = (tmp_path / "recipes").resolve()
    assert got["sph"].models == [str(recipes / "ft1"), str(recipes / "ft2")] and got["sph"].weights == [0.75, 0.25]
    assert got["sph"].method == "slerp" and got["sph"].dtype == "float16"
    assert got["drop"].density == 1.0 and got["drop"].base == "b" and got["drop"].weights == [1.0, 1.0]


UNTRANSLATABLE = [
    (
        {"slices": [{"sources": [{"model": "a", "layer_range": [0, 8]}]}], "merge_method": "slerp"},
        "slices: layer ranges",
    ),
    ({"merge_method": "della", "base_model": "b", "models": [{"model": "a"}]}, "merge_method: 'della'"),
    (
        {"merge_method": "slerp", "base_model": "a", "models": ["a", "b"], "parameters": {"t": [0, 0.5, 1]}},
        r"parameters.t: \[0, 0.5, 1\] varies by layer",
    ),
    (
        {
            "merge_method": "ties",
            "base_model": "b",
            "models": [{"model": "a", "parameters": {"weight": [{"filter": "mlp", "value": 1}, {"value": 0.5}]}}],
        },
        "models.0.parameters.weight: .* varies by layer or tensor",
    ),
    (
        {"merge_method": "linear", "models": [{"model": "a+lora", "parameters": {"weight": 1}}]},
        "models.0.model: 'a\\+lora' is mergekit's model\\+LoRA syntax",
    ),
    (
        {
            "merge_method": "dare_ties",
            "base_model": "b",
            "models": [
                {"model": "a", "parameters": {"weight": 1, "density": 0.3}},
                {"model": "c", "parameters": {"weight": 1, "density": 0.6}},
            ],
        },
        r"density: \[0.3, 0.6\] differ by model",
    ),
    ({"merge_method": "linear", "models": ["a", "b"], "tokenizer_source": "union"}, "tokenizer_source: stage 04 takes"),
    (
        {"merge_method": "ties", "models": [{"model": "a", "parameters": {"weight": 1}}]},
        "base_model: required for ties",
    ),
    ({"merge_method": "ties", "base_model": "b", "models": [{"model": "a"}]}, "models.0.parameters.weight: required"),
    (
        {
            "merge_method": "ties",
            "base_model": "b",
            "models": [{"model": "a", "parameters": {"weight": 1, "gamma": 0.1}}],
        },
        "models.0.parameters.gamma: not a per-model parameter of ties",
    ),
    ({"merge_method": "linear", "models": ["a"], "parameters": {"weight": 1}, "dtype": "int8"}, "dtype: 'int8'"),
]


@pytest.mark.parametrize("config, message", UNTRANSLATABLE, ids=[m.split(":")[0][:30] for _, m in UNTRANSLATABLE])
def test_what_has_no_translation_fails_naming_the_profile_key_and_the_mergekit_key(tmp_path, config, message):
    from platypus_utils.config import ProfileError

    with pytest.raises(ProfileError, match=r"p\.yaml: key 'merge\.model_merges\.0\.mergekit' \(inline\): " + message):
        load_with_merges(tmp_path, [{"name": "x", "mergekit": config}])


def test_a_mergekit_entry_holds_only_name_and_an_existing_config(tmp_path):
    from platypus_utils.config import ProfileError

    with pytest.raises(ProfileError, match=r"model_merges\.0\.mergekit.*weights: given beside `mergekit`"):
        load_with_merges(tmp_path, [{"name": "x", "mergekit": {"merge_method": "linear"}, "weights": [1]}])
    with pytest.raises(ProfileError, match=r"model_merges\.1\.mergekit' \(missing\.yml\): .*missing\.yml: cannot read"):
        load_with_merges(
            tmp_path,
            [
                {"name": "x", "method": "linear", "models": ["a", "b"], "weights": [1, 1]},
                {"name": "y", "mergekit": "missing.yml"},
            ],
        )
    # translated, the entry is checked like any other: a slerp of three models is refused by the schema
    slerp3 = {"merge_method": "linear", "models": ["a", "b"], "parameters": {"weight": 0, "normalize": True}}
    with pytest.raises(ProfileError, match="linear: the weights sum to 0"):
        load_with_merges(tmp_path, [{"name": "z", "mergekit": slerp3}])


@pytest.mark.parametrize(
    "method, extra",
    [
        ("linear", {"normalize": False}),
        ("slerp", {}),
        ("task_arithmetic", {"lambda_": 0.5}),
        ("ties", {"density": 0.3, "int8_mask": True}),
        ("dare_ties", {"density": 0.5, "rescale": False, "normalize": True}),
    ],
)
def test_the_config_stage_04_writes_translates_back_to_the_same_merge(tmp_path, method, extra):
    """YAML out, then in: the recipe 04 writes (mergekit.model_merge_config) read back is the merge it came from."""
    from platypus_utils import mergekit_yaml
    from platypus_utils.config import ModelMergeConfig
    from platypus_utils.merge.mergekit import model_merge_config

    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    spec = ModelMergeSpec(
        "v",
        method,
        paths,
        paths,
        [0.6, 0.4],
        extra.get("density"),
        "total",
        str(tmp_path / "base") if method not in ("linear", "slerp") else None,
        None,
        extra.get("normalize"),
        extra.get("rescale"),
        extra.get("lambda_", 1.0),
        extra.get("int8_mask", False),
    )
    back = ModelMergeConfig.model_validate(
        mergekit_yaml.translate("v", model_merge_config(spec, torch.bfloat16), tmp_path)
    )
    assert back.method == method and back.models == paths and back.weights == pytest.approx([0.6, 0.4])
    assert back.density == spec.density and back.base == spec.base and back.dtype == "bfloat16"
    assert Options.of(method, back.normalize, back.rescale, back.lambda_) == spec.options
    assert back.int8_mask == spec.int8_mask
