"""The browser UI's files never shadow an API path, and API prefixes match whole path segments only."""

import pytest

from sdplay.server.app import is_api_path


@pytest.mark.parametrize("path", ["/prompt", "/prompt/", "/history/abc", "/sdapi/v1/txt2img", "/v1/images/edits",
                                  "/health", "/openapi.json", "/docs", "/ws", "/upload/image"])  # fmt: skip
def test_api_paths(path):
    assert is_api_path(path)


@pytest.mark.parametrize("path", ["/", "/index.html", "/prompts.js", "/promptedit.js", "/queue-view.css",
                                  "/models-list.js", "/healthy.png", "/v1x"])  # fmt: skip
def test_ui_files_are_not_api_paths(path):
    assert not is_api_path(path)
