"""What a new user trips over, each checked against what torch, NumPy or the OS do:
``from_torch`` of the wrong torch class, the mode of written files, a missing output folder,
an input that is no array, a whole model's state dict given to ``load_state_dict``, and the
README's list of documentation pages."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import run_cli

import fastlstm

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["GRU", "RNN"])
def test_lstm_from_torch_refuses_other_recurrent_modules(torch, name):
    module = getattr(torch.nn, name)(4, 4)
    with pytest.raises(TypeError, match=f"^from_torch expects a torch.nn.LSTM, got {name}$"):
        fastlstm.LSTM.from_torch(module)


@pytest.mark.parametrize("name", ["GRUCell", "RNNCell", "LSTM"])
def test_cell_from_torch_refuses_other_modules(torch, name):
    module = getattr(torch.nn, name)(4, 4)
    with pytest.raises(TypeError, match=f"^from_torch expects a torch.nn.LSTMCell, got {name}$"):
        fastlstm.LSTMCell.from_torch(module)


def test_from_torch_takes_subclasses_and_refuses_lookalikes(torch):
    class Tagger(torch.nn.LSTM):
        pass

    fast = fastlstm.LSTM.from_torch(Tagger(3, 5))
    assert (fast.input_size, fast.hidden_size) == (3, 5)

    class LooksLikeAnLSTM:  # every attribute an LSTM has, but not one
        def __init__(self):
            self.__dict__.update(vars(torch.nn.LSTM(3, 5)))

    with pytest.raises(TypeError, match="got LooksLikeAnLSTM"):
        fastlstm.LSTM.from_torch(LooksLikeAnLSTM())


def _umask_write(code, folder, umask):
    """Run ``code`` (with ``path``, ``np``, ``fastlstm`` bound) under ``umask`` in a fresh
    process; the umask is process-wide, so it is not changed in the test process."""
    script = (f"import os, numpy as np, fastlstm; os.umask({umask:#o}); "
              f"path = {str(folder)!r}; " + code)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_of_a_new_file(tmp_path, umask):
    expected = 0o666 & ~umask
    _umask_write(
        "np.save(os.path.join(path, 'numpy.npy'), np.zeros(2)); "
        "m = fastlstm.LSTM(2, 3); m.save(os.path.join(path, 'm.safetensors')); "
        "m.save(os.path.join(path, 'm.npz')); "
        "fastlstm.save(m.state_dict(), os.path.join(path, 'sd.safetensors'))",
        tmp_path, umask)
    subprocess.run([sys.executable, "-c", f"import os; os.umask({umask:#o}); "
                    "from fastlstm.cli import main; import sys; sys.exit(main(['convert', "
                    f"{str(tmp_path / 'm.npz')!r}, {str(tmp_path / 'conv.safetensors')!r}]))"],
                   check=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                   capture_output=True)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["numpy.npy"] == expected  # the oracle: what NumPy's own writer gets
    assert modes == {name: expected for name in modes}, {k: oct(v) for k, v in modes.items()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fastlstm-")]


def test_overwriting_keeps_the_files_mode(tmp_path):
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    target.chmod(0o640)
    fastlstm.LSTM(2, 3).save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # as open(path, "wb") would keep it
    assert fastlstm.LSTM.from_state_dict(target).hidden_size == 3


def test_save_into_a_missing_folder_names_the_folder(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError, match="directory of .*out.npz.* does not exist"):
        fastlstm.LSTM(2, 3).save(missing / "out.npz")
    assert not (tmp_path / "no").exists()


def test_convert_into_a_missing_folder_says_so(tmp_path):
    src = tmp_path / "m.safetensors"
    fastlstm.LSTM(2, 3).save(src)
    out = tmp_path / "no" / "such" / "dir" / "out.safetensors"
    code, stdout, stderr = run_cli("convert", src, out)
    assert code == 1 and stdout == ""
    assert stderr.strip() == (f"fastlstm convert: error: {out}: the output's directory "
                              "does not exist"), stderr
    # A missing input is still a missing file.
    code, _, stderr = run_cli("convert", tmp_path / "absent.pt", tmp_path / "x.npz")
    assert code == 1 and stderr.strip().endswith("absent.pt: no such file"), stderr


NOT_ARRAYS = [None, "hello", b"bytes", {"a": 1}, ["a", "b", "c"], object()]


@pytest.mark.parametrize("value", NOT_ARRAYS, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("who", ["LSTM", "LSTMCell", "Stream.step"])
def test_input_that_is_no_array_says_so(value, who):
    call = {"LSTM": fastlstm.LSTM(3, 4), "LSTMCell": fastlstm.LSTMCell(3, 4),
            "Stream.step": fastlstm.Stream(fastlstm.LSTM(3, 4)).step}[who]
    with pytest.raises(TypeError, match=rf"^{re.escape(who)}: input must be an array of floats "
                                        rf".*got {type(value).__name__}"):
        call(value)


def test_input_that_is_no_array_is_refused_by_torch_too(torch):
    # torch refuses it as well (with an AttributeError of its internals); we name the fault.
    for value in (None, "hello"):
        with pytest.raises((TypeError, AttributeError)):
            torch.nn.LSTM(3, 4)(value)


def test_numbers_still_reach_the_shape_checks():
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 0D"):
        fastlstm.LSTM(3, 4)(5.0)
    out, _ = fastlstm.LSTM(3, 4)([[1.0, 2.0, 3.0]])  # nested lists of numbers are arrays
    assert out.shape == (1, 4)


def _whole_model(torch):
    from _helpers.weights_files import seq2seq

    return seq2seq(torch)


def test_load_state_dict_of_a_whole_model_names_the_prefix(torch):
    model = _whole_model(torch)
    state = model.state_dict()
    rnn = fastlstm.LSTM(8, 16, num_layers=2)
    with pytest.raises(RuntimeError) as info:
        rnn.load_state_dict(state)
    lines = str(info.value).split("\n\t")
    assert lines[1].startswith("Missing key(s)") and lines[2].startswith("Unexpected key(s)")
    hint = lines[-1]
    assert 'fastlstm.LSTM.from_state_dict(state_dict, prefix="' in hint
    assert '"encoder.rnn."' in hint
    # The named route works and gives the same weights.
    prefix = re.search(r'prefix="([^"]+)"', hint).group(1)
    loaded = fastlstm.LSTM.from_state_dict(state, prefix=prefix)
    sub = model.get_submodule(prefix.rstrip("."))
    np.testing.assert_array_equal(loaded.weight_hh_l1, sub.weight_hh_l1.detach().numpy())


def test_no_prefix_hint_when_the_keys_are_simply_wrong():
    with pytest.raises(RuntimeError) as info:
        fastlstm.LSTM(2, 3).load_state_dict({"weight_ih_l0": np.zeros((12, 2))})
    assert "prefix" not in str(info.value)
    with pytest.raises(RuntimeError) as info:  # some keys under a prefix, not all
        fastlstm.LSTM(2, 3).load_state_dict({"enc.weight_ih_l0": np.zeros((12, 2))})
    assert "prefix" not in str(info.value)


def test_cell_load_state_dict_prefix_hint(torch):
    cell = torch.nn.LSTMCell(3, 5)
    state = {f"decoder.cell.{k}": v for k, v in cell.state_dict().items()}
    with pytest.raises(RuntimeError, match=r'LSTMCell.from_state_dict\(state_dict, '
                                           r'prefix="decoder.cell."\)'):
        fastlstm.LSTMCell(3, 5).load_state_dict(state)


def test_readme_lists_every_documentation_page():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)\)", readme))
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), f"pages the README does not list: {pages - linked}"
    assert "docs/hardening.md" in linked and "docs/benchmarks.md" in linked


@pytest.mark.parametrize("who", ["LSTM", "LSTMCell"])
def test_an_ndarray_subclass_gets_the_errors_of_an_ndarray(who):
    """A subclass of ndarray is an array: a complex one gets the dtype error a plain
    complex ndarray gets (torch's), not the error of an object that is no array."""
    module = {"LSTM": fastlstm.LSTM(3, 4), "LSTMCell": fastlstm.LSTMCell(3, 4)}[who]

    class Tagged(np.ndarray):
        pass

    x = np.ones((2, 3), np.complex64)
    with pytest.raises(Exception) as plain:
        module(x)
    with pytest.raises(Exception) as tagged:
        module(x.view(Tagged))
    assert type(tagged.value) is type(plain.value)
    assert str(tagged.value) == str(plain.value) and "complex64" in str(plain.value)
