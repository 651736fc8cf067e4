import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CI", "true")  # belt and braces: no library may phone home from tests
# DataLoader worker processes are started only by the tests that are about them, each in a
# process of its own (``in_child``): a pool of workers shut down at some later garbage
# collection crashed the long-lived pytest process once OpenVINO and onnxruntime were loaded.
os.environ.setdefault("NAS2DEPLOY_WORKERS", "0")


def in_child(request) -> bool:
    """Run the calling test again in a fresh pytest process (real DataLoader workers there) and
    return True here, where the caller returns; False in that child, where the test runs."""
    node = request.node.nodeid
    if os.environ.get("NAS2DEPLOY_CHILD_TEST") == node:
        return False
    env = {**os.environ, "NAS2DEPLOY_CHILD_TEST": node}
    env.pop("NAS2DEPLOY_WORKERS", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return True


@pytest.fixture(scope="session")
def random_plugin(tmp_path_factory):
    """The example third-party plugin, really pip-installed (into a private folder) and found
    through its entry point, as a user's plugin would be."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target),
                    str(ROOT / "examples" / "random_search_plugin")],
                   check=True, capture_output=True)
    sys.path.insert(0, str(target))
    from nas2deploy import registry

    registry.methods.refresh()
    yield target
    sys.path.remove(str(target))
    registry.methods.refresh()


@pytest.fixture
def tiny_random_config(tmp_path):
    """A config for the random plugin that runs the whole pipeline in seconds."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('method = "example-random"\ninput-size = 16\nsearch-epochs = 1\nretrain-epochs = 3\n'
                   'target = "onnxruntime:cpu"\nexport = "onnx"\n'
                   '[method-options]\nsamples = 2\nlayers = 2\nwidth = 8\n')
    return cfg
