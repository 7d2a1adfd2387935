"""`import torch` before or after `embed` in one process: one libtorch, both work."""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
{first}
{second}
import numpy as np
import torch
import embed

with embed.embedding_service_context(model_name=sys.argv[1]) as service:
    ours = service.embed_texts(["torch and embed share a process"])
t = torch.nn.functional.normalize(torch.from_numpy(ours), dim=1)
assert abs(float(t.norm()) - 1.0) < 1e-5
maps = open("/proc/self/maps").read().splitlines()
libs = {{line.split()[-1] for line in maps if line.endswith("libtorch_cpu.so")}}
assert len(libs) == 1, libs
print("ok", libs.pop())
"""


@pytest.mark.parametrize("first,second", [("import torch", "import embed"), ("import embed", "import torch")])
def test_torch_and_embed_in_one_process(minilm, first, second):
    code = SCRIPT.format(first=first, second=second)
    out = subprocess.run([sys.executable, "-c", code, minilm], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ")
