"""File-level problems: invalid YAML, encodings, sizes, symlinks, alias bombs. Errors, never tracebacks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from config_testlib import MESH, assert_error, errors_of, line_of, load, only_error, write

from shared.config.yamlsource import MAX_FILE_BYTES


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", MESH + "description: a: b\n")
    errors = errors_of(tmp_path)
    bad = [e for e in errors if "invalid YAML" in e.message]
    assert len(bad) == 1
    assert_error(bad[0], f, line_of(f, "description:"), "", "", "invalid YAML at column 15", "mapping values")


def test_invalid_yaml_in_a_later_document_reports_its_own_line(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = write(tmp_path, "svc.yaml", "apiVersion: meshgate/v1\nkind: Service\n---\nname: [web\nport: 80\n")
    err = only_error(tmp_path)
    assert err.file == str(f)
    assert err.line in (4, 5)  # where the parser noticed the unclosed flow sequence
    assert str(err).startswith(f"{f}:{err.line}: invalid YAML at column ")


def test_tab_indentation_is_invalid_yaml(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = write(tmp_path, "p.yaml", "apiVersion: meshgate/v1\nkind: Service\nname: web\nlabels:\n\tteam: a\n")
    err = only_error(tmp_path)
    assert_error(err, f, 5, "", "", "invalid YAML at column 1")


def test_non_utf8_file_names_the_line_and_byte(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"apiVersion: meshgate/v1\nkind: Service\nname: web\ndescription: caf\xe9\n")
    err = only_error(tmp_path)
    assert_error(err, f, 4, "", "", "not UTF-8", "0xe9")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = write(tmp_path, "empty.yaml", "")
    err = only_error(tmp_path)
    assert_error(err, f, 1, "", "", "file is empty")


def test_whitespace_only_file_is_an_empty_file(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = write(tmp_path, "blank.yml", "\n   \n\n")
    assert_error(only_error(tmp_path), f, 1, "", "", "file is empty")


def test_comments_only_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = write(tmp_path, "notes.yaml", "# nothing here yet\n# really\n---\n")
    err = only_error(tmp_path)
    assert_error(err, f, 1, "", "", "only comments")


def test_file_over_one_mib_is_refused_without_parsing(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = tmp_path / "big.yaml"
    f.write_bytes(b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    err = only_error(tmp_path)
    assert_error(err, f, 1, "", "", f"file is {f.stat().st_size} bytes", "1 MiB")


def test_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    body = MESH.encode()
    f.write_bytes(body + b"#" * (MAX_FILE_BYTES - len(body) - 1) + b"\n")
    assert f.stat().st_size == MAX_FILE_BYTES
    assert load(tmp_path).ok


@pytest.mark.parametrize(
    ("link", "target"), [("sub/back", ".."), ("sub/here", "."), ("sub/deeper/up", "../..")]
)
def test_directory_symlink_to_an_enclosing_folder_is_a_loop_error(
    tmp_path: Path, link: str, target: str
) -> None:
    root = tmp_path / "policies"
    write(root, "mesh.yaml", MESH)
    (root / link).parent.mkdir(parents=True)
    os.symlink(target, root / link)
    err = only_error(root)
    assert_error(err, root / link, 1, "", "", "symlink loop")


def test_directory_symlink_to_itself_is_a_loop_error(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    os.symlink("self", tmp_path / "self")
    err = only_error(tmp_path)
    assert_error(err, tmp_path / "self", 1, "", "", "symlink loop")


def test_yaml_symlink_to_itself_is_a_loop_error(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    os.symlink("self.yaml", tmp_path / "self.yaml")
    err = only_error(tmp_path)
    assert_error(err, tmp_path / "self.yaml", 1, "", "", "symlink loop")


def test_broken_symlink_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    os.symlink("gone.yaml", tmp_path / "link.yaml")
    err = only_error(tmp_path)
    assert_error(err, tmp_path / "link.yaml", 1, "", "", "broken symlink")


def test_broken_symlink_given_as_the_root(tmp_path: Path) -> None:
    os.symlink("nowhere", tmp_path / "policies")
    err = only_error(tmp_path / "policies")
    assert_error(err, tmp_path / "policies", 1, "", "", "broken symlink")


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    err = only_error(tmp_path / "absent")
    assert_error(err, tmp_path / "absent", 1, "", "", "no such file or directory")


def test_folder_without_yaml_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not policy\n")
    err = only_error(tmp_path)
    assert_error(err, tmp_path, 1, "", "", "no *.yaml or *.yml files found")


def test_symlinked_file_and_folder_are_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write(real, "mesh.yaml", MESH)
    write(real, "svc/web.yaml", "apiVersion: meshgate/v1\nkind: Service\nname: web\n")
    root = tmp_path / "policies"
    root.mkdir()
    os.symlink(real / "mesh.yaml", root / "mesh.yaml")
    os.symlink(real / "svc", root / "svc")
    result = load(root)
    assert result.ok, result.errors
    assert result.policy_set is not None
    assert list(result.policy_set.services) == ["web"]


def test_alias_bomb_is_an_error_not_a_hang(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    f = write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    started = time.monotonic()
    err = only_error(tmp_path)
    assert time.monotonic() - started < 5
    assert_error(err, f, 1, "", "", "alias bomb")


def test_deeply_nested_document_is_an_error_not_a_crash(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = write(tmp_path, "deep.yaml", "x: " + "[" * 5000 + "]" * 5000 + "\n")
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert errors[0].file == str(f)


def test_yaml_merge_keys_are_refused(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\ntrafficPolicy:\n  <<: {timeout: 1s}\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "<<:"), "Service/web", "trafficPolicy", "merge keys")


def test_custom_yaml_tags_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    f = write(
        tmp_path, "p.yaml", "apiVersion: meshgate/v1\nkind: Service\nname: !!python/name:os.system web\n"
    )
    err = only_error(tmp_path)
    assert err.file == str(f)
