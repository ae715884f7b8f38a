"""The start-up hint for packages whose bytecode is never cached (PYTHONDONTWRITEBYTECODE over uncompiled installs)."""

import compileall
import logging
import sys

import pytest

from zolightning.cli.bytecode import uncached_packages, warn_if_bytecode_uncached


@pytest.fixture
def package(tmp_path, monkeypatch):
    folder = tmp_path / "zo_fake_pkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return folder


def test_a_package_without_bytecode_is_found_and_compiling_it_clears_it(package):
    assert uncached_packages(("zo_fake_pkg", "no_such_package_here")) == {"zo_fake_pkg": str(package)}
    assert compileall.compile_dir(str(package), quiet=1)
    assert uncached_packages(("zo_fake_pkg",)) == {}


def test_warns_only_where_python_will_not_write_the_caches(package, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="zolightning.cli.bytecode")
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert not warn_if_bytecode_uncached(("zo_fake_pkg",))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert warn_if_bytecode_uncached(("zo_fake_pkg",))
    assert "PYTHONDONTWRITEBYTECODE" in caplog.text and f"compileall -q {package}" in caplog.text
