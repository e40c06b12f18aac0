/*
 * fsr-xattr: the extended-attribute calls a guest can make, one per run, so
 * that scenarios can try them on a share (busybox has no getfattr/setfattr).
 *
 *   fsr-xattr get FILE NAME           prints the value
 *   fsr-xattr set FILE NAME VALUE     sets NAME to VALUE
 *   fsr-xattr remove FILE NAME        removes NAME
 *   fsr-xattr list FILE               prints the names, one per line
 *
 * Exit 0 on success; on failure prints "fsr-xattr: error ERRNO_NAME" (for
 * example ENODATA, EPERM) on standard output and exits 1; 2 on bad usage.
 * Built static with musl by guest-images/build-guest.sh.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/xattr.h>

#define MAX_VALUE 65536

/* The errno names scenarios look for (musl has no strerrorname_np). */
static const char *errno_name(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EIO: return "EIO";
	case E2BIG: return "E2BIG";
	case EACCES: return "EACCES";
	case EINVAL: return "EINVAL";
	case ENOSPC: return "ENOSPC";
	case ERANGE: return "ERANGE";
	case ENODATA: return "ENODATA";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENAMETOOLONG: return "ENAMETOOLONG";
	default: return NULL;
	}
}

static int failed(void)
{
	int e = errno;
	const char *name = errno_name(e);

	if (name)
		printf("fsr-xattr: error %s\n", name);
	else
		printf("fsr-xattr: error errno %d\n", e);
	return 1;
}

int main(int argc, char **argv)
{
	static char buf[MAX_VALUE];
	ssize_t n;

	if (argc == 4 && strcmp(argv[1], "get") == 0) {
		n = getxattr(argv[2], argv[3], buf, sizeof(buf));
		if (n < 0)
			return failed();
		fwrite(buf, 1, (size_t)n, stdout);
		putchar('\n');
		return 0;
	}
	if (argc == 5 && strcmp(argv[1], "set") == 0)
		return setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) < 0 ? failed() : 0;
	if (argc == 4 && strcmp(argv[1], "remove") == 0)
		return removexattr(argv[2], argv[3]) < 0 ? failed() : 0;
	if (argc == 3 && strcmp(argv[1], "list") == 0) {
		n = listxattr(argv[2], buf, sizeof(buf));
		if (n < 0)
			return failed();
		for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
			puts(buf + i);
		return 0;
	}
	fprintf(stderr, "usage: fsr-xattr get FILE NAME | set FILE NAME VALUE | remove FILE NAME | list FILE\n");
	return 2;
}
