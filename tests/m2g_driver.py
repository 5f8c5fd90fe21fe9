"""Runs the real m2g's ``m2g`` entry point (``m2g.scripts.m2g_bids:main``) in its own CPython
3.7 virtualenv, once per case, and writes what m2g did as JSON. Run by tests/test_m2g_real.py
with that virtualenv's interpreter; Python 3.7 code, no project imports.

    python3.7 m2g_driver.py parse    CASES OUT   # m2g's own argument parsing of each argv
    python3.7 m2g_driver.py discover CASES OUT   # m2g's main up to its diffusion worker

``parse`` stops m2g right after its parser, where it checks for FSL and AFNI. ``discover``
runs m2g's main as it is (the parser, the BIDS check, the atlases of the voxel size and the
parcellation filter, pybids' input discovery) with only two things replaced: the FSL/AFNI
check (no FSL or AFNI here) and ``m2g_dwi_worker``, whose arguments (the files and
parcellations m2g found for each scan) are recorded instead of run. CASES is a JSON list of
``{"argv": [...], "home": folder or null}``; OUT gets one result per case.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import traceback


class Stop(Exception):
    """Raised where the driver ends m2g's main on purpose."""


def run_case(mode, case):
    from m2g.scripts import m2g_bids

    parsed = []
    calls = []
    original_parse_args = argparse.ArgumentParser.parse_args

    def recording_parse_args(self, *args, **kwargs):
        result = original_parse_args(self, *args, **kwargs)
        parsed.append(vars(result))
        return result

    def no_fsl_check():
        if mode == "parse":
            raise Stop()

    def worker(**kwargs):
        calls.append({k: v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v) for k, v in kwargs.items()})

    argparse.ArgumentParser.parse_args = recording_parse_args
    m2g_bids.check_dependencies = no_fsl_check
    m2g_bids.m2g_dwi_worker = worker
    if case.get("home"):
        os.environ["HOME"] = case["home"]
    sys.argv = ["m2g"] + case["argv"]
    out, err = io.StringIO(), io.StringIO()
    result = {"argv": case["argv"]}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            m2g_bids.main()
        result["outcome"] = "returned"
    except Stop:
        result["outcome"] = "stopped"
    except SystemExit as exit_:
        result["outcome"] = "exit"
        result["code"] = exit_.code
    except Exception as error:  # what m2g raised: its message is the finding
        result["outcome"] = "error"
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-3000:]
    finally:
        argparse.ArgumentParser.parse_args = original_parse_args
    result["parsed"] = parsed[0] if parsed else None
    result["worker_calls"] = calls
    result["stdout"] = out.getvalue()[-3000:]
    result["stderr"] = err.getvalue()[-3000:]
    return result


def main():
    mode, cases_file, out_file = sys.argv[1:4]
    with open(cases_file) as f:
        cases = json.load(f)
    results = [run_case(mode, case) for case in cases]
    with open(out_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
