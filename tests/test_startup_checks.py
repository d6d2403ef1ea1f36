"""Start-up checks of twistd's options: a bad config or an unusable directory
ends start-up with one line on stderr and exit status 1, before any port opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbx.tap import Options


def start(tmp_path: Path, extra: str) -> Options:
    path = tmp_path / "config.yml"
    path.write_text(f"server: {{sip_host: 127.0.0.1}}\ndatabase: {{path: {tmp_path / 'pbx.db'}}}\n{extra}")
    options = Options()
    options.parseOptions(["--config", str(path)])
    return options


def refused(tmp_path: Path, extra: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit:
        start(tmp_path, extra)
    assert exit.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_voicemail_spool_is_created_at_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool" / "voicemail"
    start(tmp_path, f"voicemail: {{storage_path: {spool}}}")
    assert spool.is_dir()


def test_a_spool_that_cannot_be_created_stops_start_up(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = refused(tmp_path, f"voicemail: {{storage_path: {blocker / 'voicemail'}}}", capsys)
    assert line.startswith("pbx: voicemail.storage_path: cannot create")


def test_disabled_voicemail_needs_no_spool(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    start(tmp_path, f"voicemail: {{enabled: false, storage_path: {blocker / 'voicemail'}}}")


@pytest.mark.parametrize("key", ["voicemail.prompts_directory", "music_on_hold.directory"])
def test_a_missing_media_directory_stops_start_up(tmp_path: Path, capsys, key: str) -> None:
    section, name = key.split(".")
    extra = f"voicemail: {{storage_path: {tmp_path / 'vm'}}}\n"
    if section == "voicemail":
        extra = f"voicemail: {{storage_path: {tmp_path / 'vm'}, {name}: {tmp_path / 'nowhere'}}}\n"
    else:
        extra += f"{section}: {{{name}: {tmp_path / 'nowhere'}}}\n"
    line = refused(tmp_path, extra, capsys)
    assert line == f"pbx: {key}: '{tmp_path / 'nowhere'}' is not a directory"
