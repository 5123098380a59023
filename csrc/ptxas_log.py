"""nvcc launcher (CMAKE_CUDA_COMPILER_LAUNCHER): keep ptxas' resource report of each object.

    ptxas_log.py nvcc ARGS... -o OBJ      run nvcc; its `ptxas info` lines go to OBJ.ptxas.log
                                          (other stderr lines, e.g. warnings, are passed through)
    ptxas_log.py --merge OUT OBJ...       concatenate the objects' reports into OUT

The report (registers, spill stores/loads, shared memory per kernel instance and arch) is what
tests/test_cuda_build.py and the static report read.
"""
import subprocess
import sys


def compile_and_log(cmd):
    out = cmd[cmd.index("-o") + 1] if "-o" in cmd else None
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    report, passthrough = [], []
    for line in proc.stderr.splitlines(keepends=True):
        is_report = line.startswith("ptxas info") or (report and line.startswith("    ") and "bytes" in line)
        (report if is_report else passthrough).append(line)
    if out is not None and proc.returncode == 0:
        with open(out + ".ptxas.log", "w") as f:
            f.writelines(report)
    sys.stderr.writelines(passthrough if proc.returncode == 0 else proc.stderr)
    return proc.returncode


def merge(out, objects):
    with open(out, "w") as f:
        for obj in objects:
            f.write(f"# {obj}\n")
            with open(obj + ".ptxas.log") as log:
                f.write(log.read())


if __name__ == "__main__":
    if sys.argv[1] == "--merge":
        merge(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(compile_and_log(sys.argv[1:]))
