from fffcore.wording import counted


def test_counts_are_singular_for_one_and_plural_otherwise():
    assert counted(1, "chunk") == "1 chunk"
    assert counted(0, "chunk") == "0 chunks"
    assert counted(40, "chunk") == "40 chunks"
    assert counted(2, "process", "processes") == "2 processes"
    assert counted(1, "process", "processes") == "1 process"
