from tools.pip_sources import parse


def test_pips_sources_become_uv_options_once_each_in_order():
    listing = "\n".join(
        [
            ":env:.cert='/etc/ssl/certs/ca-certificates.crt'",
            ":env:.find-links='/opt/wheels'",
            "global.constraint='/etc/xdg/pip/constraints.txt'",
            "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
            "global.find-links='/opt/wheels'",
            "install.index-url='https://mirror.example/simple'",
            "global.timeout='60'",
        ]
    )
    assert parse(listing) == [
        "--find-links", "/opt/wheels",
        "--constraint", "/etc/xdg/pip/constraints.txt",
        "--extra-index-url", "file:///opt/pypi/simple",
        "--extra-index-url", "file:///opt/pypi-more/simple",
        "--index-url", "https://mirror.example/simple",
    ]  # fmt: skip


def test_an_unconfigured_pip_adds_nothing():
    assert parse("") == []
