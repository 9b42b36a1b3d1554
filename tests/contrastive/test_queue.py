import torch

from sslkit.contrastive.queue import KeyQueue


def _reference_fifo(size, dim, pushes):
    """Key-by-key FIFO: the independent reference."""
    slots, ptr = [None] * size, 0
    for batch in pushes:
        for row in batch:
            slots[ptr] = row
            ptr = (ptr + 1) % size
    return slots, ptr


def test_fifo_wraps_exactly_with_k_not_multiple_of_batch_and_short_batch():
    q = KeyQueue(10, 3)
    pushes = [torch.full((4, 3), float(i)) + torch.arange(4.0)[:, None] / 10 for i in range(1, 4)]
    pushes.append(torch.full((3, 3), 9.0))  # a short last batch
    for p in pushes:
        q.push(p, gather=False)
    slots, ptr = _reference_fifo(10, 3, pushes)
    assert int(q.ptr) == ptr == 5
    for i, row in enumerate(slots):
        torch.testing.assert_close(q.keys[i], row)


def test_push_larger_than_queue_keeps_newest():
    q = KeyQueue(4, 2)
    q.push(torch.zeros(1, 2), gather=False)
    big = torch.arange(14.0).view(7, 2)
    q.push(big, gather=False)
    slots, ptr = _reference_fifo(4, 2, [torch.zeros(1, 2), big])
    assert int(q.ptr) == ptr
    for i, row in enumerate(slots):
        torch.testing.assert_close(q.keys[i], row)


def test_queue_is_in_state_dict_and_restores():
    q = KeyQueue(6, 2)
    q.push(torch.ones(4, 2), gather=False)
    state = q.state_dict()
    assert set(state) == {"keys", "ptr", "filled"}
    r = KeyQueue(6, 2)
    r.load_state_dict(state)
    assert int(r.ptr) == 4 and int(r.filled) == 4
    torch.testing.assert_close(r.keys, q.keys)


def test_initial_keys_are_unit_vectors():
    q = KeyQueue(32, 8)
    torch.testing.assert_close(q.keys.norm(dim=1), torch.ones(32))


def _fill(q: KeyQueue) -> float:
    """The share of the queue holding real keys (MoCo logs it as queue_fill)."""
    return int(q.filled) / q.size


def test_fill_counts_real_keys_up_to_the_size():
    q = KeyQueue(10, 2)
    fills = [_fill(q)]
    for _ in range(4):  # 4 pushes of 3: 3, 6, 9, then capped at 10
        q.push(torch.ones(3, 2), gather=False)
        fills.append(_fill(q))
    assert fills == [0.0, 0.3, 0.6, 0.9, 1.0]


def test_checkpoint_without_fill_counter_loads_as_full():
    q = KeyQueue(6, 2)
    state = {"keys": torch.zeros(6, 2), "ptr": torch.tensor(2)}
    q.load_state_dict(state)
    assert int(q.filled) == 6 and _fill(q) == 1.0


def test_a_queue_at_least_as_long_as_the_data_gets_a_one_line_notice():
    from sslkit.contrastive.queue import queue_cap, queue_notice

    assert queue_notice(65535, 65536) is None
    text = queue_notice(65536, 60000)  # `sslkit train method=mocov2` on the full Fashion-MNIST
    assert text is not None and "\n" not in text
    assert "method.queue_size=65536 >= the 60000 pretraining images" in text and "method.queue_size=8192" in text
    assert queue_notice(60000, 60000) is not None and queue_cap(60000) == 8192 and queue_cap(3) == 1
