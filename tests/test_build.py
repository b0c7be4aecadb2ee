"""The portable build: the run-time choice of the kernels' variant (snnfast._dispatch), the
variants' equal results, and the baseline's machine code (x86-64-v2 only: no AVX anywhere)."""
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import snnfast
from snnfast import _config, _dispatch

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(snnfast.__file__).resolve().parent
X86_64 = platform.machine() in ("x86_64", "AMD64")
BI = _config._build_info()
DISPATCH = getattr(BI, "MODE", None) == "dispatch"
needs_dispatch = pytest.mark.skipif(not DISPATCH, reason="a build without variants "
                                    "(SNNFAST_NATIVE=1, SNNFAST_DEBUG=1 or not x86-64)")

V3 = ["avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe"]
V4 = V3 + ["avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"]
FAKE = types.SimpleNamespace(MODE="dispatch", LEVEL="v2", VARIANTS={"v3": V3, "v4": V4})


def _cpu(*lacks):
    return lambda name: 0 if name in lacks else 1


# --- the choice, on fake CPUs ---

@pytest.mark.parametrize("lacks,xcr0,level", [
    ((), 0xE7, "v4"),
    (("avx512bw",), 0xE7, "v3"),            # one AVX-512 feature missing
    ((), 0x7, "v3"),                         # the OS does not save the AVX-512 registers
    ((), 0x3, "v2"),                         # ... nor the AVX ones
    ((), 0x0, "v2"),                         # no XSAVE at all
    ((), -1, "v4"),                          # XCR0 unknown: __builtin_cpu_supports decides
    (("fma",), 0xE7, "v2"),                  # no v3 without FMA, and so no v4 either
])
def test_auto_picks_the_best_level_the_cpu_and_os_run(lacks, xcr0, level):
    assert _dispatch.choose(FAKE, "", _cpu(*lacks), xcr0) == level
    assert _dispatch.choose(FAKE, " AUTO ", _cpu(*lacks), xcr0) == level


def test_a_forced_level_is_loaded_or_refused_with_a_reason():
    assert _dispatch.choose(FAKE, "v2", _cpu(), 0xE7) == "v2"
    assert _dispatch.choose(FAKE, "v3", _cpu(), 0xE7) == "v3"
    assert _dispatch.choose(FAKE, "v3", _cpu("avx512f"), 0xE7) == "v3"
    with pytest.raises(ImportError, match=r"SNNFAST_ISA=v4: this CPU .* cannot run"):
        _dispatch.choose(FAKE, "v4", _cpu("avx512f"), 0xE7)
    with pytest.raises(ImportError, match=r"SNNFAST_ISA=v4: this CPU"):
        _dispatch.choose(FAKE, "v4", _cpu(), 0x7)
    with pytest.raises(ImportError, match=r"SNNFAST_ISA='avx9' is not one of auto, v2, v3, v4"):
        _dispatch.choose(FAKE, "avx9", _cpu(), 0xE7)


@pytest.mark.parametrize("mode,level", [("native", "native"), ("baseline", "default"),
                                        ("baseline", "v2")])
def test_builds_without_variants_run_their_baseline(mode, level):
    bi = types.SimpleNamespace(MODE=mode, LEVEL=level, VARIANTS={})
    assert _dispatch.choose(bi, "", _cpu(), 0xE7) == level
    with pytest.raises(ImportError, match=r"SNNFAST_ISA=v3: this build of snnfast has no v3"):
        _dispatch.choose(bi, "v3", _cpu(), 0xE7)


def test_check_cpu_names_the_remedy_for_each_kind_of_build(monkeypatch):
    from snnfast import _cpu
    installed = []
    monkeypatch.setattr(_dispatch, "install", installed.append)   # keep this process's choice
    monkeypatch.setattr(_cpu, "cpu_supports", lambda name: 0 if name == "sse4.2" else 1)
    v2 = types.SimpleNamespace(ISA=["popcnt", "sse4.2"], LEVEL="v2")
    monkeypatch.setattr(_config, "_build_info", lambda: v2)
    with pytest.raises(ImportError, match=r"lacks \(sse4\.2\): its baseline is x86-64-v2.*"
                                          r"SNNFAST_NATIVE=1 pip install"):
        _config.check_cpu()
    assert installed == []                                          # refused before choosing
    monkeypatch.setattr(_cpu, "cpu_supports", lambda name: 1)
    _config.check_cpu()
    assert installed == [v2]


# --- this machine ---

def test_loaded_kernels_are_the_chosen_level():
    """Also the check of the SNNFAST_ISA runs in subprocesses below and in .ci/run."""
    from snnfast import _cpu
    from snnfast import _engine, _convsnn_fc  # noqa: F401  (loaded through the finder)
    level = _dispatch.choose(BI, os.environ.get("SNNFAST_ISA", ""), _cpu.cpu_supports,
                             _cpu.os_xsave_state())
    assert _dispatch.chosen_level() == level
    levels = _dispatch.module_levels()
    assert levels["_engine"] == levels["_convsnn_fc"] == level
    if DISPATCH and level != BI.LEVEL:
        assert Path(_engine.__file__).parent == PACKAGE / "_isa" / level
        # every kernel module has the variant: none silently stays at the baseline
        assert {lvl for name, lvl in levels.items() if name != "_openmp_helpers"} == {level}
    else:
        assert Path(_engine.__file__).parent == PACKAGE


@pytest.mark.skipif(platform.machine() in ("x86_64", "AMD64", "i386", "i686"),
                    reason="x86: test_packaging.py checks the CPU checker against the kernel")
def test_other_architectures_get_one_build_without_x86_flags():
    # aarch64 (checked under qemu by tools/check_aarch64.sh): the checker cannot tell (-1,
    # never 0, which would refuse the build), and the build has no variant and no x86 flag
    from snnfast import _cpu
    assert [_cpu.cpu_supports(n) for n in ("sse4.2", "avx2", "avx512f")] == [-1, -1, -1]
    assert _cpu.os_xsave_state() == -1
    assert BI is not None, "the extensions were not built"
    assert (BI.ISA, BI.VARIANTS, BI.VARIANT_CFLAGS) == ([], {}, {})
    assert not (PACKAGE / "_isa").exists() or not any((PACKAGE / "_isa").rglob("*.so"))
    if BI.MODE != "native":         # SNNFAST_NATIVE=1 passes -march=native on any CPU
        assert (BI.MODE, BI.LEVEL) == ("baseline", "default")
        assert not [f for f in BI.CFLAGS if f.startswith("-m")], BI.CFLAGS
    assert _dispatch.chosen_level() == BI.LEVEL
    assert set(_dispatch.module_levels().values()) == {BI.LEVEL}


def _env(**kw):
    env = dict(os.environ, **kw)
    # the subprocess imports the same snnfast as this process (a checkout or an installation)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE.parent), env.get("PYTHONPATH", "")])
    return env


def _usable_levels():
    from snnfast import _cpu
    return [BI.LEVEL] + [lvl for lvl, feats in BI.VARIANTS.items()
                         if _dispatch.usable(feats, _dispatch.XCR0_NEEDED[lvl],
                                             _cpu.cpu_supports, _cpu.os_xsave_state())]


# The kernel tests' core checks: compiled == NumPy reference, 1 thread == 2 threads. Each is
# exact by design on any ISA (elementwise float32 arithmetic in a fixed order, no contraction)
CORE_KERNEL_TESTS = [
    "test_convsnn_kernels.py::test_forward_matches_oracle",
    "test_convsnn_kernels.py::test_thread_count_bit_identical",
    "test_convsnn_kernels.py::test_adam_matches_numpy",
    "test_convsnn_kernels.py::test_ema_step_equals_numpy_bits",
    "test_convsnn_kernels.py::test_w1_steps_thread_count_bit_identical",
    "test_convsnn_kernels.py::test_conv_rate_backward_matches_numpy",
    "test_engine.py::test_random_networks_equal_the_reference_bit_for_bit",
    "test_ttfs.py::test_threads_bit_identical",
    "test_build.py::test_loaded_kernels_are_the_chosen_level",
]


@needs_dispatch
@pytest.mark.slow
def test_forced_baseline_passes_the_core_kernel_tests():
    here = Path(__file__).resolve().parent
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-x", *[str(here / t) for t in CORE_KERNEL_TESTS]],
                       env=_env(SNNFAST_ISA=BI.LEVEL), capture_output=True, text=True,
                       timeout=1200, cwd=here)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


TRAIN_AND_HASH = """
import hashlib, sys
import numpy as np
from snnfast import _dispatch
from snnfast.convsnn import ConvSNN
from snnfast.train import synthetic_digits
X, y, Xte, yte = synthetic_digits(96, 64, seed=3)
m = ConvSNN("default", seed=0, n_threads=2, batch_size=32)
m.fit(X, y, epochs=1)
h = hashlib.sha256()
for k in sorted(m.params):
    h.update(k.encode()); h.update(np.ascontiguousarray(m.params[k]).tobytes())
h.update(np.ascontiguousarray(m.predict(Xte)).tobytes())
print(_dispatch.chosen_level(), h.hexdigest())
"""


@needs_dispatch
@pytest.mark.slow
def test_every_variant_trains_to_the_same_bits():
    """Same C code, -ffp-contract=off: the level changes the speed, never a bit of a result."""
    out = {}
    for level in _usable_levels():
        r = subprocess.run([sys.executable, "-c", TRAIN_AND_HASH], env=_env(SNNFAST_ISA=level),
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        got, digest = r.stdout.split()
        assert got == level
        out[level] = digest
    assert len(out) >= 1 and len(set(out.values())) == 1, out


# --- the machine code of the baseline: x86-64-v2, no AVX of any width ---

# VEX/EVEX-only general-purpose instructions (BMI1/2, LZCNT, MOVBE is not VEX but not v2 either).
# TZCNT is left out on purpose: GCC emits "rep bsf" for generic x86-64, which objdump shows as
# tzcnt and which older CPUs run as bsf.
NON_V2_MNEMONICS = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext",
                    "rorx", "sarx", "shlx", "shrx", "lzcnt", "movbe"}
# virtualisation instructions that start with "v" and are not AVX (never in user code anyway)
VMX = {"verr", "verw", "vmcall", "vmlaunch", "vmresume", "vmxoff", "vmxon", "vmread",
       "vmwrite", "vmptrld", "vmptrst", "vmclear", "vmfunc", "vmrun", "vmload", "vmsave",
       "vmmcall"}
# a line of `objdump -d --no-show-raw-insn`: address, optional {vex}/{evex} prefix, mnemonic
INSN = re.compile(r"^\s*[0-9a-f]+:\s+(?:\{\w+\}\s*)?([a-z][a-z0-9.]*)\s*(.*)$")


def avx_instructions(disassembly):
    """The lines of an ``objdump -d --no-show-raw-insn`` listing (AT&T syntax) whose
    instruction needs more than x86-64-v2: any AVX/AVX2/AVX-512/FMA/F16C instruction (VEX/EVEX: mnemonics starting with
    ``v``, AVX-512 mask ``k`` instructions), a ymm/zmm/mask register, or a BMI/LZCNT/MOVBE
    instruction."""
    bad = []
    for line in disassembly.splitlines():
        m = INSN.match(line)
        if not m:
            continue
        op, args = m.groups()
        if ((op.startswith("v") and op not in VMX) or op.startswith("k")
                or op in NON_V2_MNEMONICS or re.search(r"%[yz]mm\d|%k[0-7]\b", args)):
            bad.append(line.strip())
    return bad


def test_the_detector_flags_avx_and_passes_sse():
    listing = """
0000000000001000 <f>:
   0:	vaddps %ymm1,%ymm0,%ymm0
   4:	vaddps %zmm1,%zmm0,%zmm0
   a:	vfmadd213ps %xmm2,%xmm1,%xmm0
   f:	vzeroupper
  12:	kmovw  %eax,%k1
  16:	andn   %ecx,%eax,%eax
  1b:	addps  %xmm1,%xmm0
  1e:	ptest  %xmm1,%xmm0
  23:	popcnt %eax,%eax
  27:	tzcnt  %eax,%eax
  2b:	roundss $0x9,%xmm1,%xmm0
  31:	rep stos %rax,%es:(%rdi)
  34:	{vex} vpdpbusd %xmm2,%xmm1,%xmm0
"""
    bad = avx_instructions(listing)
    assert [b.split(":", 1)[1].split()[0] for b in bad] == [
        "vaddps", "vaddps", "vfmadd213ps", "vzeroupper", "kmovw", "andn", "{vex}"]


def _objdump():
    exe = shutil.which("objdump")
    if exe is None:
        pytest.skip("objdump (binutils) is not installed")
    if not X86_64:
        pytest.skip("the check reads x86-64 machine code")
    return exe


def _disassemble(exe, path):
    r = subprocess.run([exe, "-d", "--no-show-raw-insn", str(path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_dispatch
def test_baseline_modules_contain_no_avx_instruction():
    exe = _objdump()
    files = _dispatch.extension_files(PACKAGE)
    assert {"_engine", "_convsnn_fc", "_cpu", "_openmp_helpers"} <= set(files)
    offenders = {}
    for name, path in files.items():
        bad = avx_instructions(_disassemble(exe, path))
        if bad:
            offenders[name] = bad[:5]
    assert not offenders, f"AVX code in the x86-64-v2 baseline: {offenders}"


@needs_dispatch
def test_the_check_sees_the_avx_of_the_variants():
    # the same check must fail on the dispatched variants, or it proves nothing above
    exe = _objdump()
    for level, reg in (("v3", "%ymm"), ("v4", "%zmm")):
        files = _dispatch.extension_files(PACKAGE / "_isa" / level)
        listing = _disassemble(exe, files["_convsnn_fc"])
        assert avx_instructions(listing)
        assert reg in listing
    v3 = _disassemble(exe, _dispatch.extension_files(PACKAGE / "_isa" / "v3")["_convsnn_fc"])
    assert "%zmm" not in v3                     # and v3 has no AVX-512
