"""What the fault probe did to workdirs, for the tests that check what survives it: bits
flipped in checkpoint chunk files, and a byte-for-byte picture of a folder (the full disk
is conftest's `small_disk` fixture)."""

from pathlib import Path


def files(folder: Path) -> dict[Path, bytes]:
    """Every file under `folder` and its bytes (to assert that nothing changed)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def flip_bits(step_dir: Path, count: int = 1, at: float = 0.5) -> None:
    """One bit flipped at fraction `at` of each of the `count` largest chunk files of a
    checkpoint's state (a silent disk or memory fault): sizes and names unchanged."""
    chunks = sorted((p for p in (step_dir / "state").rglob("d/*") if p.is_file()),
                    key=lambda p: p.stat().st_size, reverse=True)[:count]
    assert chunks, f"no chunk files in {step_dir}"
    for chunk in chunks:
        data = bytearray(chunk.read_bytes())
        data[int(len(data) * at)] ^= 0x10
        chunk.write_bytes(bytes(data))
