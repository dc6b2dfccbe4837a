import pytest
import torch

from vilg.app.model.transformer import I2T, T2I, VQA, GPTConfig, UnifiedTransformer


@pytest.fixture
def model():
    torch.manual_seed(0)
    return UnifiedTransformer(
        GPTConfig(
            text_vocab=30, image_vocab=12, text_len=10, grid=(3, 3), n_layer=4, n_head=2, n_embd=32
        )
    ).eval()


def _inputs(B=2, T=7):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randint(5, 30, (B, T), generator=g),
        torch.randint(0, 12, (B, 9), generator=g),
        torch.tensor([T, T - 3]),
    )


def test_text2image_is_causal_over_image_and_ignores_padding(model):
    text, img, lens = _inputs()
    h = model(T2I, text, img, lens)
    img2 = img.clone()
    img2[:, 5:] = (img2[:, 5:] + 1) % 12
    h2 = model(T2I, text, img2, lens)
    T = text.shape[1]
    assert torch.allclose(h[:, : T + 5], h2[:, : T + 5], atol=1e-5)
    assert not torch.allclose(h[:, T + 5 :], h2[:, T + 5 :], atol=1e-5)
    text3 = text.clone()
    text3[1, 4:] = 0  # sample 1 has 4 real tokens: its padding must not matter
    h3 = model(T2I, text3, img, lens)
    assert torch.allclose(h[1, :4], h3[1, :4], atol=1e-5)
    assert torch.allclose(h[1, T:], h3[1, T:], atol=1e-5)


def test_image2text_image_ignores_text_and_text_is_causal(model):
    text, img, _ = _inputs()
    h = model(I2T, text, img)
    text2 = text.clone()
    text2[:, 3:] = 1
    h2 = model(I2T, text2, img)
    assert torch.allclose(h[:, :9], h2[:, :9], atol=1e-5)  # image source never sees text
    assert torch.allclose(h[:, :12], h2[:, :12], atol=1e-5)  # text before position 3
    assert not torch.allclose(h[:, 12:], h2[:, 12:], atol=1e-5)


@pytest.mark.parametrize("direction", [T2I, I2T])
def test_kv_cache_decode_matches_full_forward(model, direction):
    text, img, lens = _inputs()
    T, N = text.shape[1], 9
    full = model(direction, text, img, lens if direction == T2I else None)
    if direction == T2I:
        caches = model.new_caches(2, T + N, "cpu")
        # prefill: only the first image input is real; later keys get overwritten by steps
        pre = model(T2I, text, img[:, :1].expand(-1, 9).contiguous(), lens, caches=caches)
        assert torch.allclose(pre[:, T], full[:, T], atol=1e-5)
        for j in range(1, N):
            h = model.step(T2I, img[:, j], T + j, T, caches, lens)
            assert torch.allclose(h, full[:, T + j], atol=1e-4), j
    else:
        caches = model.new_caches(2, N + T, "cpu")
        pre = model(I2T, text[:, :2], img, None, caches=caches)
        assert torch.allclose(pre[:, N + 1], full[:, N + 1], atol=1e-5)
        for t in range(2, T):
            h = model.step(I2T, text[:, t], N + t, T, caches)
            assert torch.allclose(h, full[:, N + t], atol=1e-4), t


def _vqa_inputs():
    g = torch.Generator().manual_seed(2)
    question = torch.randint(5, 30, (2, 5), generator=g)
    return (
        question,
        torch.randint(0, 12, (2, 9), generator=g),
        torch.randint(5, 30, (2, 4), generator=g),
    )


def test_vqa_image_reads_the_question_and_answer_is_causal(model):
    question, img, answer = _vqa_inputs()
    h = model(VQA, question, img, answer_ids=answer)
    q2 = question.clone()
    q2[:, 2] = (q2[:, 2] + 1) % 30
    h2 = model(VQA, q2, img, answer_ids=answer)
    assert not torch.allclose(h[:, 5:14], h2[:, 5:14], atol=1e-5)  # image positions see it
    a2 = answer.clone()
    a2[:, 2:] = 1
    h3 = model(VQA, question, img, answer_ids=a2)
    assert torch.allclose(h[:, :16], h3[:, :16], atol=1e-5)  # source + answers before 2
    assert not torch.allclose(h[:, 16:], h3[:, 16:], atol=1e-5)
    with pytest.raises(ValueError, match="answer_ids"):
        model(VQA, question, img)


def test_vqa_padded_question_equals_unpadded(model):
    # sample 1's question has 3 real tokens: padded to 5 it must give the same answer states
    # (padding masked, answer positions continuing from 3) as the 3-token question alone
    question, img, answer = _vqa_inputs()
    padded = question.clone()
    padded[1, 3:] = 0
    h = model(VQA, padded, img, torch.tensor([5, 3]), answer_ids=answer)
    alone = model(VQA, question[1:, :3], img[1:], answer_ids=answer[1:])
    assert torch.allclose(h[1, 5 + 9 :], alone[0, 3 + 9 :], atol=1e-5)
    assert torch.allclose(h[1, 5:14], alone[0, 3:12], atol=1e-5)


def test_vqa_kv_cache_decode_matches_full_forward(model):
    question, img, answer = _vqa_inputs()
    lens = torch.tensor([5, 2])
    T, N, A = 5, 9, answer.shape[1]
    full = model(VQA, question, img, lens, answer_ids=answer)
    caches = model.new_caches(2, N + model.cfg.text_len, "cpu")
    pre = model(VQA, question, img, lens, caches=caches, answer_ids=answer[:, :1])
    assert torch.allclose(pre[:, -1], full[:, T + N], atol=1e-5)
    for j in range(1, A):
        h = model.step(VQA, answer[:, j], T + N + j, T, caches, lens)
        assert torch.allclose(h, full[:, T + N + j], atol=1e-4), j


def test_text_too_long_is_rejected(model):
    with pytest.raises(ValueError, match="exceeds"):
        model(T2I, torch.zeros(1, 11, dtype=torch.long), torch.zeros(1, 9, dtype=torch.long))


def test_activation_checkpointing_gives_the_same_gradients(model):
    text, img, lens = _inputs()
    model.train()
    grads = []
    for ckpt in (False, True):
        model.grad_checkpointing = ckpt
        model.zero_grad()
        h = model(T2I, text, img, lens)
        model.image_logits(h[:, text.shape[1] :]).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
