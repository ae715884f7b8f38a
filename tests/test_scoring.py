import torch
import torch.nn.functional as F

from zolightning.data.encoding import EncodedExample, collate
from zolightning.forward.scoring import answer_logprobs, batch_loss, candidate_scores
from zolightning.models import load_causal_lm


def _reference_scores(model, examples):
    """Each candidate run alone through the full model; mean log-prob of its answer tokens."""
    scores = torch.full((len(examples), max(len(e.sequences) for e in examples)), float("-inf"))
    for b, example in enumerate(examples):
        for c, (ids, n) in enumerate(zip(example.sequences, example.answer_lengths)):
            logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            targets = torch.tensor(ids[len(ids) - n :])
            scores[b, c] = logits[len(ids) - n - 1 : len(ids) - 1].gather(1, targets[:, None]).mean()
    return scores


def _examples(single_token: bool):
    generator = torch.Generator().manual_seed(0)
    out = []
    for b in range(3):
        prompt = torch.randint(3, 250, (5 + 2 * b,), generator=generator).tolist()
        answers = [[17], [42], [99]] if single_token else [[17, 18], [42], [99, 3, 4]]
        out.append(
            EncodedExample(
                tuple(tuple(prompt + a) for a in answers), tuple(len(a) for a in answers), gold=b % 3, truncated=False
            )
        )
    return out


@torch.no_grad()
def test_batched_scores_equal_one_candidate_at_a_time():
    model = load_causal_lm("tiny-llama")
    for single in (True, False):
        examples = _examples(single)
        batch = collate(examples, pad_id=2)
        assert (batch["input_ids"].shape[0] == 3) == single  # folded: one row per example
        got = candidate_scores(answer_logprobs(model, batch), batch)
        assert torch.allclose(got, _reference_scores(model, examples), atol=1e-5)


@torch.no_grad()
def test_classification_loss_is_cross_entropy_over_candidates_and_lm_loss_over_gold_tokens():
    model = load_causal_lm("tiny-llama-untied")
    examples = _examples(single_token=False)
    batch = collate(examples, pad_id=2)
    loss, scores = batch_loss(model, batch)
    assert torch.allclose(loss, F.cross_entropy(scores, batch["gold"]))
    lm = collate(
        [EncodedExample((e.sequences[e.gold],), (e.answer_lengths[e.gold],), 0, False) for e in examples],
        pad_id=2,
        kind="lm",
    )
    lm_loss, none = batch_loss(model, lm)
    assert none is None
    assert torch.allclose(lm_loss, -answer_logprobs(model, lm).mean())


@torch.no_grad()
def test_candidate_mask_handles_a_varying_number_of_candidates():
    model = load_causal_lm("tiny-llama")
    examples = [
        EncodedExample(((5, 6, 7), (5, 6, 8)), (1, 1), 0, False),
        EncodedExample(((5, 9, 7), (5, 9, 8), (5, 9, 10)), (1, 1, 1), 2, False),
    ]
    batch = collate(examples, pad_id=2)
    scores = candidate_scores(answer_logprobs(model, batch), batch)
    assert scores.shape == (2, 3) and scores[0, 2] == float("-inf") and torch.isfinite(scores[1]).all()


def test_scoring_forwards_keep_no_key_value_cache(monkeypatch):
    # a cache would hold every layer's keys and values to the end of the forward (and be outputs of a compiled one)
    import transformers.cache_utils

    from zolightning.forward.fast_forward import FastScoringModel
    from zolightning.forward.shape_plan import ShapePlan

    created = []
    cache = transformers.cache_utils.DynamicCache
    original = cache.__init__
    monkeypatch.setattr(cache, "__init__", lambda self, *a, **k: created.append(1) or original(self, *a, **k))
    model = load_causal_lm("tiny-llama")
    batch = collate([EncodedExample(((5, 9, 11, 40, 7, 3),), (2,), 0, False)] * 2, 0, "lm")
    outside_the_plan = FastScoringModel(model, plan=ShapePlan(rows=(1,), lengths=(1,)))  # its eager trunk
    with torch.no_grad():
        batch_loss(model, batch)
        batch_loss(outside_the_plan, batch)
        assert not created
        model(input_ids=batch["input_ids"])  # the check can fail: a plain forward makes one
    assert len(created) == 1
