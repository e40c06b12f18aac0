/*
 * fsr-exit CODE: end the VM with exit code CODE (0-255) by writing it as one
 * byte to the VMM's exit port, I/O port 0xf4 (docs/guest-protocol.md).
 *
 * Built static with musl by guest-images/build-guest.sh so the initramfs needs no libc.
 * Under QEMU the same port is served by `-device isa-debug-exit,iobase=0xf4`,
 * which exits QEMU with (CODE << 1) | 1.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

#define EXIT_PORT 0xf4

static void usage(FILE *out)
{
	fprintf(out,
		"usage: fsr-exit CODE\n"
		"Ends the VM with exit code CODE (0-255) by writing it to I/O port 0x%x.\n",
		EXIT_PORT);
}

int main(int argc, char **argv)
{
	char *end;
	long code;

	if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc != 2) {
		usage(stderr);
		return 2;
	}

	errno = 0;
	code = strtol(argv[1], &end, 10);
	if (argv[1][0] == '\0' || *end != '\0' || errno != 0 || code < 0 || code > 255) {
		fprintf(stderr, "fsr-exit: exit code '%s' is not a number from 0 to 255\n", argv[1]);
		return 2;
	}

	if (ioperm(EXIT_PORT, 1, 1) != 0) {
		fprintf(stderr,
			"fsr-exit: ioperm(0x%x) failed: %s; it needs root and a guest kernel built "
			"with CONFIG_X86_IOPL_IOPERM=y\n",
			EXIT_PORT, strerror(errno));
		return 1;
	}
	outb((unsigned char)code, EXIT_PORT);

	/* A VMM with an exit port never lets the write return. */
	fprintf(stderr,
		"fsr-exit: wrote %ld to I/O port 0x%x but the VM is still running; "
		"the VMM has no exit device there\n",
		code, EXIT_PORT);
	return 1;
}
