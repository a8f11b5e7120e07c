"""Tasks: packaged data, splits, templates, label tokens, user files, prompts and their tokens."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from dualform.models.load import byte_tokenizer, load_model
from dualform.tasks.prompts import (
    OFFLINE_TASKS,
    ContextLengthError,
    Example,
    LabelTokenError,
    PromptTokenizationError,
    Task,
    TaskError,
    build_prompt,
    check_context,
    label_token_ids,
    label_token_sequences,
    load_task,
    load_user_task,
    prompt_tokens,
    sample_demos,
)
from dualform.tasks.sources import (
    OBJECTIVE_MAX,
    SUBJECTIVE_MIN,
    countries,
    textblob_subjectivity_senses,
)

EXPECTED_LABELS = {
    "afinn-sentiment": ["Negative", "Positive"],
    "afinn-sentiment-5": ["terrible", "bad", "neutral", "good", "great"],
    "vader-valence": ["unpleasant", "pleasant"],
    "country-region": ["Africa", "Americas", "Asia", "Europe"],
    "capital-region": ["Africa", "Americas", "Asia", "Europe"],
    "textblob-subjectivity": ["objective", "subjective"],
}


def keys(examples):
    return [e.key() for e in examples]


def toy_task(template="Word: {x} Sentiment: {y}", labels=("Negative", "Positive"), n=12):
    train = [Example({"x": f"w{i}"}, i % 2) for i in range(n)]
    return Task("toy", template, list(labels), train, [], [Example({"x": "query"}, 1)])


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


# --------------------------------------------------------------------------- packaged tasks


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_offline_tasks_are_balanced_disjoint_and_deterministic(name):
    task = load_task(name, seed=0)
    assert task.label_words == EXPECTED_LABELS[name]
    assert task.template.endswith("{y}") and task.source and task.description
    splits = [task.train, task.validation, task.test]
    all_keys = [k for s in splits for k in keys(s)]
    assert len(all_keys) == len(set(all_keys)), "an input appears twice"
    for split in splits:
        counts = Counter(e.label for e in split)
        assert set(counts) == set(range(task.n_classes))
        assert max(counts.values()) - min(counts.values()) <= 1
    again = load_task(name, seed=0)
    assert keys(again.test) == keys(task.test) and keys(again.train) == keys(task.train)
    assert keys(load_task(name, seed=1).test) != keys(task.test)


def test_offline_task_sizes_and_labels_are_real_data():
    task = load_task("afinn-sentiment")
    assert len(task.train) + len(task.validation) + len(task.test) == 2 * 1176  # positives
    words = {e.fields["x"]: e.label for s in (task.train, task.validation, task.test) for e in s}
    assert words["good"] == 1 and words["superb"] == 1  # the smaller (positive) class is whole
    assert words.get("bad", 0) == 0
    region = load_task("country-region")
    truth = {c["name"]: c.get("region") for c in countries()}
    for example in region.train + region.validation + region.test:
        assert region.label_words[example.label] == truth[example.fields["x"]]


def test_subjectivity_task_is_the_lexicons_hand_tags_in_the_papers_template():
    task = load_task("textblob-subjectivity")
    assert task.template == "Input: {x} Type: {y}"  # Dai et al.'s Subj template
    senses = textblob_subjectivity_senses()
    examples = task.train + task.validation + task.test
    assert len(examples) == 2 * sum(max(v) <= OBJECTIVE_MAX for v in senses.values())
    for example in examples:
        values = senses[example.fields["x"]]
        assert (max(values) <= OBJECTIVE_MAX) if example.label == 0 else (
            min(values) >= SUBJECTIVE_MIN)
    labels = {e.fields["x"]: task.label_words[e.label] for e in examples}
    assert labels["daily"] == labels["digital"] == "objective"  # the smaller class is whole
    assert labels.get("beautiful", "subjective") == "subjective"
    assert "good" not in labels  # senses tagged 0.4 and 0.8: neither class


def test_changing_n_train_keeps_the_evaluation_sets():
    small = load_task("vader-valence", n_train=10, n_validation=20, n_test=30)
    big = load_task("vader-valence", n_train=100, n_validation=20, n_test=30)
    assert (len(small.train), len(small.validation), len(small.test)) == (10, 20, 30)
    assert keys(small.test) == keys(big.test) and keys(small.validation) == keys(big.validation)


def test_uneven_evaluation_sizes_leave_train_whole():
    """24 test + 12 validation over 5 classes leave unequal class remainders: train takes them."""
    task = load_task("afinn-sentiment-5", n_validation=12, n_test=24)
    total = len(task.train) + len(task.validation) + len(task.test)
    assert (len(task.validation), len(task.test), total) == (12, 24, 1205)
    counts = Counter(e.label for e in task.train)
    assert max(counts.values()) - min(counts.values()) <= 2
    with pytest.raises(TaskError, match="can't be split evenly"):
        load_task("afinn-sentiment-5", n_validation=12, n_test=24, n_train=len(task.train) - 1)


def test_too_many_examples_and_unknown_names_raise():
    with pytest.raises(TaskError, match="only .* left"):
        load_task("country-region", n_test=10_000)
    with pytest.raises(TaskError, match="afinn-sentiment.*sst2"):
        load_task("no-such-task")


# --------------------------------------------------------------------------- templates


def test_format_puts_the_separating_space_in_the_label():
    task = toy_task()
    example = Example({"x": "lovely"}, 1)
    assert task.format(example, with_label=False) == "Word: lovely Sentiment:"
    assert task.format(example) == "Word: lovely Sentiment: Positive"
    assert task.label_continuations == [" Negative", " Positive"]
    assert task.label_anchor == " Sentiment:"


def test_multi_field_template_and_template_errors():
    cb = Task("cb", "{premise} Question: {hypothesis} True, False, or Neither? Answer: {y}",
              ["True", "False", "Neither"], [], [], [])
    assert cb.fields == ("premise", "hypothesis")
    ex = Example({"premise": "It rains.", "hypothesis": "It is wet."}, 2)
    assert cb.format(ex) == "It rains. Question: It is wet. True, False, or Neither? Answer: Neither"
    with pytest.raises(TaskError, match="lacks template field"):
        cb.format(Example({"x": "no premise"}, 0))
    with pytest.raises(TaskError, match="exactly once"):
        Task("bad", "Sentence: {x}", ["a", "b"], [], [], [])


# --------------------------------------------------------------------------- user data


def test_user_jsonl_with_int_labels_and_named_fields(tmp_path):
    path = tmp_path / "nli.jsonl"
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": i % 2} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = load_user_task(path, "{premise} Q: {hypothesis} A: {y}", ["yes", "no"],
                          label_field="gold", seed=3, n_test=8, n_validation=4)
    assert (len(task.train), len(task.validation), len(task.test)) == (28, 4, 8)
    assert task.name == "nli"
    all_keys = keys(task.train) + keys(task.validation) + keys(task.test)
    assert len(set(all_keys)) == 40
    again = load_user_task(path, "{premise} Q: {hypothesis} A: {y}", ["yes", "no"],
                           label_field="gold", seed=3, n_test=8, n_validation=4)
    assert keys(again.test) == keys(task.test)
    first = next(e for s in (task.train, task.validation, task.test) for e in s
                 if e.fields["premise"] == "p3")
    assert task.format(first) == "p3 Q: h3 A: no"


def test_user_csv_with_label_words_and_errors(tmp_path):
    path = tmp_path / "reviews.csv"
    lines = ["review,sentiment"] + [f"review {i},{'positive' if i % 2 else 'Negative'}"
                                    for i in range(20)]
    path.write_text("\n".join(lines) + "\n")
    task = load_user_task(path, "Review: {x} Sentiment: {y}", ["Negative", "Positive"],
                          text_field="review", label_field="sentiment", balanced=True)
    labels = {e.fields["x"]: e.label for s in (task.train, task.validation, task.test) for e in s}
    assert labels["review 1"] == 1 and labels["review 2"] == 0  # case-insensitive label word
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,maybe\n")
    with pytest.raises(TaskError, match="record 1.*'maybe' is not one of"):
        load_user_task(bad, "{x} {y}", ["no", "yes"])
    with pytest.raises(TaskError, match="lacks column"):
        load_user_task(path, "{x} {y}", ["no", "yes"])
    with pytest.raises(TaskError, match=r"\.jsonl or \.csv"):
        load_user_task(tmp_path / "data.txt", "{x} {y}", ["no", "yes"])


# --------------------------------------------------------------------------- demonstrations


def test_sample_demos_is_balanced_seeded_and_from_train():
    task = load_task("afinn-sentiment-5")
    demos = sample_demos(task, 7, seed=1)
    counts = Counter(d.label for d in demos)
    assert len(demos) == 7 and max(counts.values()) - min(counts.values()) <= 1
    assert set(keys(demos)) <= set(keys(task.train))
    assert keys(sample_demos(task, 7, seed=1)) == keys(demos)
    assert keys(sample_demos(task, 7, seed=2)) != keys(demos)
    lopsided = Task("t", "{x} {y}", ["a", "b"], [Example({"x": str(i)}, int(i == 0))
                                                  for i in range(6)], [], [])
    assert Counter(d.label for d in sample_demos(lopsided, 4, seed=0)) == {0: 3, 1: 1}
    with pytest.raises(TaskError, match="Can't sample"):
        sample_demos(task, len(task.train) + 1, seed=0)


# --------------------------------------------------------------------------- label tokens


def test_byte_tokenizer_multi_token_labels_use_the_first_token():
    tok = byte_tokenizer()  # bytes plus "space + byte" merges: " Positive" → " P", "o", ...
    task = toy_task()
    sequences = label_token_sequences(tok, task)
    assert sequences == [tok.encode(" Negative", add_special_tokens=False),
                         tok.encode(" Positive", add_special_tokens=False)]
    assert all(len(s) > 1 for s in sequences)
    assert label_token_ids(tok, task) == [s[0] for s in sequences]
    assert tok.decode(label_token_ids(tok, task)) == " N P"
    no_space = toy_task(template="Sentiment:{y}")
    assert label_token_ids(tok, no_space) == tok.encode("NP", add_special_tokens=False)


def test_byte_tokenizer_labels_with_a_shared_first_token_raise():
    with pytest.raises(LabelTokenError, match=r"\['Positive', 'Plenty'\] all start with token"):
        label_token_ids(byte_tokenizer(), toy_task(labels=("Positive", "Plenty")))


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_real_tokenizer_labels_are_single_natural_next_tokens(smol, name):
    task = load_task(name, n_train=20)
    ids = label_token_ids(smol, task)
    assert label_token_sequences(smol, task) == [[i] for i in ids]
    assert len(set(ids)) == task.n_classes
    tok = smol.tokenizer
    for example in task.test[:50]:
        prefix = tok.encode(task.format(example, with_label=False), add_special_tokens=False)
        full = tok.encode(task.format(example), add_special_tokens=False)
        assert full == prefix + [ids[example.label]]


# --------------------------------------------------------------------------- prompts


def check_prompt(model, task, k):
    prompt = build_prompt(task, sample_demos(task, k, seed=0), task.test[0])
    pt = prompt_tokens(model, prompt)
    assert pt.tokens.shape == model.to_tokens(prompt.text).shape
    assert (pt.tokens == model.to_tokens(prompt.text)).all()
    assert pt.demo_start == 1 and pt.tokens[0, 0] == model.tokenizer.bos_token_id
    demo = pt.tokens[0, pt.demo_start:pt.demo_start + pt.n_demo_tokens].tolist()
    query = pt.tokens[0, pt.demo_start + pt.n_demo_tokens:].tolist()
    assert model.tokenizer.decode(demo) == prompt.demo_text
    assert model.tokenizer.decode(query) == prompt.query_text
    assert pt.n_query_tokens == len(query) > 0
    return prompt, pt


def test_prompt_layout_and_zero_shot(tiny):
    task = load_task("afinn-sentiment")
    demos = sample_demos(task, 2, seed=0)
    prompt = build_prompt(task, demos, task.test[0])
    assert prompt.text == f"{task.format(demos[0])}\n{task.format(demos[1])}\n" + \
        task.format(task.test[0], with_label=False)
    _, pt = check_prompt(tiny, task, 4)
    zero = prompt_tokens(tiny, build_prompt(task, [], task.test[0]))
    assert zero.n_demo_tokens == 0 and zero.demo_start == 1
    assert prompt_tokens(tiny, prompt, prepend_bos=False).demo_start == 0


def test_prompt_tokens_feed_dual_form(tiny):
    from dualform.core.dual_form import dual_form

    task = load_task("country-region")
    prompt = build_prompt(task, sample_demos(task, 2, seed=0), task.test[0])
    pt = prompt_tokens(tiny, prompt)
    out = dual_form(tiny, pt.tokens, pt.n_demo_tokens, demo_start=pt.demo_start)
    assert out.delta_w_icl.shape[0] == tiny.cfg.n_layers
    assert out.delta_w_icl.isfinite().all() and out.delta_w_icl.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_real_tokenizer_prompt_split_equals_whole_tokenization(smol, name):
    check_prompt(smol, load_task(name), 8)


@pytest.mark.slow
def test_space_separator_is_caught_on_a_bpe_tokenizer(smol):
    task = load_task("afinn-sentiment")
    prompt = build_prompt(task, sample_demos(task, 2, seed=0), task.test[0], separator=" ")
    with pytest.raises(PromptTokenizationError, match="separator ' '"):
        prompt_tokens(smol, prompt)
    assert prompt_tokens(smol, prompt, check=False).n_demo_tokens > 0


def test_context_length_error_names_both_numbers(tiny):
    check_context(tiny, tiny.cfg.n_ctx)
    too_long = tiny.cfg.n_ctx + 1
    with pytest.raises(ContextLengthError, match=rf"{too_long} tokens .* {tiny.cfg.n_ctx}"):
        check_context(tiny, too_long)
    task = load_task("afinn-sentiment")
    long_prompt = build_prompt(task, sample_demos(task, 120, seed=0), task.test[0])
    with pytest.raises(ContextLengthError, match="cfg.n_ctx"):
        prompt_tokens(tiny, long_prompt)
