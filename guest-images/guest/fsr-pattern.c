/*
 * fsr-pattern: writes or checks a reproducible pseudo-random byte stream, so
 * that the host can know what a guest file must hold without trusting the
 * path the bytes took (tests/src/pattern.rs makes the same stream).
 *
 *   fsr-pattern write FILE SIZE SEED   create FILE with SIZE bytes of stream SEED
 *   fsr-pattern check FILE SIZE SEED   exit 0 if FILE holds exactly those bytes
 *
 * The stream: xorshift64* with state SEED * 0x9E3779B97F4A7C15 + 1, each step
 * giving 8 bytes (the product's little-endian bytes). Files are written and
 * read in 1 MiB blocks. Built static with musl by guest-images/build-guest.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK (1u << 20)

static uint64_t state;

/* Fills buf with the next len bytes; a step's 8 bytes are stored at once
 * (the guest is x86-64, little-endian), which matters under emulation. */
static void fill(unsigned char *buf, size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t x = state;

		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		state = x;
		x *= 0x2545F4914F6CDD1DULL;
		memcpy(buf + i, &x, len - i < 8 ? len - i : 8);
	}
}

static int parse_u64(const char *text, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(text, &end, 10);
	return errno || end == text || *end ? -1 : 0;
}

static int do_write(const char *path, uint64_t size)
{
	static unsigned char buf[BLOCK];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0) {
		fprintf(stderr, "fsr-pattern: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (uint64_t done = 0; done < size;) {
		size_t len = size - done < BLOCK ? (size_t)(size - done) : BLOCK;
		size_t off = 0;

		fill(buf, len);
		while (off < len) {
			ssize_t n = write(fd, buf + off, len - off);

			if (n <= 0) {
				fprintf(stderr, "fsr-pattern: write %s at %llu: %s\n", path,
					(unsigned long long)(done + off), n < 0 ? strerror(errno) : "wrote nothing");
				close(fd);
				return 1;
			}
			off += (size_t)n;
		}
		done += len;
	}
	if (close(fd) < 0) {
		fprintf(stderr, "fsr-pattern: close %s: %s\n", path, strerror(errno));
		return 1;
	}
	return 0;
}

static int do_check(const char *path, uint64_t size)
{
	static unsigned char want[BLOCK], got[BLOCK];
	int fd = open(path, O_RDONLY);
	uint64_t done = 0;

	if (fd < 0) {
		fprintf(stderr, "fsr-pattern: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (;;) {
		ssize_t n = read(fd, got, BLOCK);

		if (n < 0) {
			fprintf(stderr, "fsr-pattern: read %s at %llu: %s\n", path,
				(unsigned long long)done, strerror(errno));
			close(fd);
			return 1;
		}
		if (n == 0)
			break;
		if (done + (uint64_t)n > size) {
			fprintf(stderr, "fsr-pattern: %s is longer than %llu bytes\n", path,
				(unsigned long long)size);
			close(fd);
			return 1;
		}
		fill(want, (size_t)n);
		for (ssize_t i = 0; i < n; i++) {
			if (want[i] != got[i]) {
				fprintf(stderr, "fsr-pattern: %s differs at byte %llu\n", path,
					(unsigned long long)(done + (uint64_t)i));
				close(fd);
				return 1;
			}
		}
		done += (uint64_t)n;
	}
	close(fd);
	if (done != size) {
		fprintf(stderr, "fsr-pattern: %s has %llu bytes, not %llu\n", path,
			(unsigned long long)done, (unsigned long long)size);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t size, seed;

	if (argc != 5 || (strcmp(argv[1], "write") != 0 && strcmp(argv[1], "check") != 0) ||
	    parse_u64(argv[3], &size) || parse_u64(argv[4], &seed)) {
		fprintf(stderr, "usage: fsr-pattern write|check FILE SIZE SEED\n"
				"Writes or checks SIZE bytes of the reproducible stream SEED.\n");
		return 2;
	}
	state = seed * 0x9E3779B97F4A7C15ULL + 1;
	if (state == 0)
		state = 1;
	return strcmp(argv[1], "write") == 0 ? do_write(argv[2], size) : do_check(argv[2], size);
}
