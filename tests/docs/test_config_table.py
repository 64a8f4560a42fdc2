"""docs/config.md's method-settings table is generated from each method's `Settings`."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("config_table", ROOT / "docs" / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_method_settings_table_is_up_to_date():
    generator = load_generator()
    text = (ROOT / "docs" / "config.md").read_text()
    assert generator.render(text) == text, "stale table: run .venv/bin/python docs/config_table.py"


def test_the_table_has_a_row_with_the_defaults_of_every_method():
    from kdlib.methods.base import method_names

    table = load_generator().table()
    for name in method_names():
        assert f"| `{name}` |" in table
    assert "`temperature` 4.0, `ce_weight` 0.1, `kd_weight` 0.9" in table  # KD's defaults, read from KDSettings
