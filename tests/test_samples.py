from leader.data.samples import CodeEncoder


def test_samples_one_per_visit_with_history(tiny_data):
    samples = tiny_data.samples()
    assert len(samples) == tiny_data.visits.height
    by_id = {s.sample_id: s for s in samples}
    for s in samples:
        assert len(s.visits) == int(s.sample_id.split("/")[1]) + 1
        if len(s.visits) > 1:
            prev = by_id[f"{s.patient_id}/{len(s.visits) - 2}"]
            assert prev.visits == s.visits[:-1]


def test_last_mode_keeps_one_sample_per_patient(tiny_data):
    samples = tiny_data.samples(mode="last")
    assert len(samples) == tiny_data.visits["patient_id"].n_unique()


def test_code_batch_shift_and_first_visit(tiny_data):
    enc = CodeEncoder(tiny_data.vocab, tiny_data.profile_vocab, max_visits=2)
    samples = tiny_data.samples("train")
    long = next(s for s in samples if len(s.visits) >= 3)
    first = next(s for s in samples if len(s.visits) == 1)
    batch = enc.collate([long, first])
    assert batch.visit_mask.tolist() == [[True, True], [False, True]]
    # the long history is cut to the last 2 visits, so neither of them is the patient's first
    assert batch.first_visit.tolist() == [[False, False], [False, True]]
    drug_index = tiny_data.drugs.index
    prev = {c for c in long.visits[-2].drugs}
    got = {tiny_data.drugs.codes[i - 1] for i in batch.prev_drugs[0, 1].tolist() if i}
    assert got == prev & set(drug_index)
    assert batch.target[1].sum() == len(first.target)
    assert batch.profile.shape == (2, len(tiny_data.profile_vocab))
    assert (batch.profile > 0).all()
