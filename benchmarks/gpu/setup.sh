# Source on the GPU machine: installs carried wheels, reassembles the SmolLM2 GGUF, sets paths.
#   call 1 (carry .whl .carry/a):  source benchmarks/gpu/setup.sh stash
#   call 2 (carry .carry/b):       source benchmarks/gpu/setup.sh stash
#   call 3 (carry .whl .carry/c):  source benchmarks/gpu/setup.sh join
# The GGUF (98 MB) is over one call's 64 MiB with the work tree, so it travels in parts kept under ~/zo
# (split -b 34000000 -d -a 1 GGUF gguf.part: part0 in .carry/a with gguf.sha256, part1 in .carry/b, part2 in
# .carry/c; any number of parts joins the same way); carry .carry/d too:
# data.tar.xz, a copy of ../shared/data (tar cJf .carry/d/data.tar.xz -C .. shared/data/<task> ...); .carry/e holds
# every task (2.1 MB), for the learned optimizer's runs.
mkdir -p ~/zo
mv .carry/*/gguf.* ~/zo/ 2>/dev/null  # whichever parts this call carries
if [ "$1" = join ] && [ ! -s ~/zo/smollm2.gguf ]; then  # -s: a failed join leaves no empty file behind
  cat ~/zo/gguf.part[0-9] > ~/zo/smollm2.gguf
  echo "$(cat ~/zo/gguf.sha256)  $HOME/zo/smollm2.gguf" | sha256sum -c - || { rm -f ~/zo/smollm2.gguf; return 1; }
fi
for archive in .carry/*/data.tar.xz; do  # whichever copies of the data this call carries
  [ -f "$archive" ] && tar xJf "$archive" -C ~/zo --strip-components=1  # shared/data/<task> -> ~/zo/data/<task>
done
# Bytecode compiled at install, as a user's pip does: should the image not write .pyc files, every fit would
# otherwise compile the carried packages' sources again (not measured on the GPU).
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# The image sets PYTHONDONTWRITEBYTECODE=1 over a torch without .pyc files: every launch recompiles its sources
# (docs/benchmarks.md). BYTECODE=write measures what a pip install lives through instead; say which in results.
[ "${BYTECODE:-}" = write ] && unset PYTHONDONTWRITEBYTECODE
export GGUF=$HOME/zo/smollm2.gguf DATA=$HOME/zo/data
export ZOLIGHTNING_TEST_DATA=$DATA  # tests/conftest.py: the tests' copy of the shared data (tests/test_gpu.py)
