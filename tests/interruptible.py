"""Child processes a test interrupts with SIGINT, whatever the shell that started the tests did.

A shell running the suite as a background job (`scripts/test.sh &`, CI runners) starts it with SIGINT
ignored, and an ignored signal stays ignored across fork and exec: Python then installs no
KeyboardInterrupt handler and the child never sees the Ctrl-C the test sends. Restoring the default
disposition in the child before exec gives it the handler an interactive Ctrl-C would.
"""
import signal
import subprocess


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen_interruptible(args, **kwargs) -> subprocess.Popen:
    """subprocess.Popen with SIGINT's default disposition restored in the child (POSIX)."""
    return subprocess.Popen(args, preexec_fn=_default_sigint, **kwargs)
