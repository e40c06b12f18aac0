#!/bin/sh
# The interactive shell on the console, with job control: setsid starts a new
# session and cttyhack makes the console's real tty (e.g. ttyS0) the
# controlling terminal. Ends with the shell's exit code.
export ENV=/etc/shrc
exec setsid cttyhack sh
