"""The trap check (diagnose.py) on models put into each known trap by fixing their weights.

``trap_model`` builds a real AIR whose weights make every image get the same proposals: step k says present or
absent and looks at a chosen window (the LSTM counts the steps in its cell state; the predictor's last layer is
solved for the wanted outputs), the encoder measures the ink in the window and the decoder draws a bright square
where there was ink and nothing where there was none. On images with blobs at known places this gives a healthy
model or one in each trap."""

import torch

from attend_infer_repeat import AIR
from attend_infer_repeat.config import ModelConfig
from attend_infer_repeat.diagnose import TRAP_RATES, check_traps

SIZE = 20


def window(cx: float, cy: float, side: float) -> tuple[float, float, float]:
    """z_where of a window of ``side`` pixels centred at pixel (cx, cy)."""
    return SIZE / side, cx / (SIZE / 2) - 1, cy / (SIZE / 2) - 1


def trap_model(steps: list[tuple[bool, tuple[float, float, float]]], dair: bool = False) -> AIR:
    cfg = ModelConfig(image_size=SIZE, window_size=8, z_what_dim=4, lstm_hidden=16, encoder_hidden=8,
                      decoder_hidden=8, predict_hidden=16, max_steps=len(steps), scale_prior_mean=2.0, dair=dair)
    torch.manual_seed(0)
    model = AIR(cfg)
    h = cfg.lstm_hidden
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # LSTM: gates open, the cell adds tanh(0.3) each step, so h differs from step to step (and not by image)
        bias = model.lstm.image_proj.bias
        bias[:h], bias[h:2 * h], bias[2 * h:3 * h], bias[3 * h:] = 20.0, 20.0, 0.3, 20.0
        hidden = torch.tanh(torch.tanh(torch.tensor(0.3)) * torch.arange(1, len(steps) + 1.0))  # h per step
        first, last = model.predict.net[0], model.predict.net.last
        first.weight.fill_(1.0 / h)  # unit j: relu(h - t_j), kinks between the steps' h so that any outputs fit
        first.bias.copy_(-torch.linspace(0.0, 0.75, cfg.predict_hidden))
        acts = torch.relu(hidden[:, None] * first.weight.sum(1)[None] + first.bias[None])  # (steps, hidden)
        targets = torch.tensor([[10.0 if present else -10.0, *(torch.tensor(where) - model.where_prior_loc), -7, -7,
                                 -7] for present, where in steps])
        design = torch.cat([acts, torch.ones(len(steps), 1)], 1).double()
        solution = (torch.linalg.pinv(design) @ targets.double()).float()  # exact: fewer equations than unknowns
        last.weight.copy_(solution[:-1].T)
        last.bias.copy_(solution[-1])
        # encoder: z_what[0] = the ink in the window; decoder: a bright square if that is more than 1
        enc1, enc2 = model.encoder.net[0], model.encoder.net.last
        enc1.weight[0] = 1.0
        enc2.weight[0, 0] = 1.0
        dec1, dec2 = model.decoder.net[0], model.decoder.net.last
        dec1.weight[0, 0], dec1.bias[0] = 1.0, -1.0
        dec2.weight[:, 0] = 100.0
        dec2.bias.fill_(-10.0 - cfg.decoder_output_bias)
    return model.eval()


def images(*blobs: tuple[int, int, int, int], n: int = 12) -> torch.Tensor:
    """n copies of an image with bright rectangles (x0, y0, x1, y1)."""
    x = torch.zeros(n, 1, SIZE, SIZE)
    for x0, y0, x1, y1 in blobs:
        x[:, 0, y0:y1, x0:x1] = 1.0
    return x


BLOB = (3, 3, 9, 9)  # a 6x6 blob centred at (6, 6)
ON_BLOB = window(6, 6, 6)


def names(result: dict) -> set[str]:
    return {t["name"] for t in result["traps"]}


def test_trap_model_does_what_it_is_built_to_do():
    model = trap_model([(True, ON_BLOB), (False, ON_BLOB)])
    r = model.infer(images(BLOB))
    assert (r.counts == 1).all()
    assert torch.allclose(r.boxes[0], torch.tensor([[3.0, 3.0, 9.0, 9.0]]), atol=0.05)
    assert torch.allclose(r.object_boxes[0], torch.tensor([[3.0, 3.0, 9.0, 9.0]]), atol=1.0)


def test_a_healthy_model_shows_no_trap():
    model = trap_model([(True, ON_BLOB), (True, window(15, 15, 6)), (False, ON_BLOB)])
    result = check_traps(model, images(BLOB, (12, 12, 18, 18)))
    assert result["traps"] == [] and result["images"] == 12
    assert all(rate <= TRAP_RATES[k] for k, rate in result["rates"].items() if k != "constant_count")
    assert result["rates"]["constant_count"] == 1.0  # every image holds two objects: a constant count is right


def test_two_windows_on_one_object():
    model = trap_model([(True, ON_BLOB), (True, ON_BLOB), (False, ON_BLOB)])
    result = check_traps(model, images(BLOB))
    assert "duplicate_objects" in names(result)
    trap = next(t for t in result["traps"] if t["name"] == "duplicate_objects")
    assert trap["rate"] == 1.0 and "--seed" in trap["message"] and "--dair" in trap["message"]


def test_the_advice_does_not_suggest_dair_to_a_dair_model():
    """The same two windows on one object in a DAIR run: another --seed, and no '--dair' for a run that has it."""
    result = check_traps(trap_model([(True, ON_BLOB), (True, ON_BLOB), (False, ON_BLOB)], dair=True), images(BLOB))
    trap = next(t for t in result["traps"] if t["name"] == "duplicate_objects")
    assert "--seed" in trap["message"] and "--dair" not in trap["message"]


def test_an_object_split_in_two():
    wide = (3, 5, 15, 11)  # 12 x 6: its left and right halves, one window each
    model = trap_model([(True, window(6, 8, 6)), (True, window(12, 8, 6)), (False, ON_BLOB)])
    result = check_traps(model, images(wide))
    assert names(result) == {"split_objects"}


def test_a_blank_object():
    model = trap_model([(True, ON_BLOB), (True, window(16, 16, 6)), (False, ON_BLOB)])  # the second sees no ink
    result = check_traps(model, images(BLOB))
    assert names(result) == {"blank_objects"}


def test_objects_left_unexplained():
    model = trap_model([(True, ON_BLOB), (False, ON_BLOB)])  # stops after the first of two blobs
    result = check_traps(model, images(BLOB, (12, 12, 18, 18)))
    assert names(result) == {"unexplained_ink"}
    assert "--max-steps" in result["traps"][0]["message"]


def test_every_step_always_present():
    three = [(3, 3, 7, 7), (12, 3, 16, 7), (7, 12, 11, 16)]
    model = trap_model([(True, window(5, 5, 4)), (True, window(14, 5, 4)), (True, window(9, 14, 4))])
    result = check_traps(model, images(*three))
    assert names(result) == {"constant_count"}
    assert "the most its 3 steps allow" in result["traps"][0]["message"]


def test_a_model_that_explains_nothing():
    model = trap_model([(False, ON_BLOB), (False, ON_BLOB)])
    result = check_traps(model, images(BLOB))
    assert names(result) == {"constant_count", "unexplained_ink"}
    assert "explains nothing" in next(t for t in result["traps"] if t["name"] == "constant_count")["message"]


def test_one_count_for_every_image_is_no_trap_when_it_can_be_right():
    model = trap_model([(True, ON_BLOB), (False, ON_BLOB), (False, ON_BLOB)])  # one object, and there is one
    assert check_traps(model, images(BLOB))["traps"] == []


def test_no_images():
    assert check_traps(trap_model([(True, ON_BLOB)]), torch.zeros(0, 1, SIZE, SIZE))["traps"] == []
