#!/bin/sh
# Smoke test 4, guest side (tests/smoke/isolation.rs): a guest trying to
# reach or forge what it must not, in DIR/iso (which must not exist yet).
# The host put a file holding HOST-SECRET next to the share's guest tree
# (at <tree>/../secret.txt; in the test host that is /share/smoke/secret.txt);
# no attempt here may read it. Argument: the share's mount point.
# Leaves for the host to check: plain.txt (a redirected file, chmod 4755),
# null (char 1,3), disk (block 8,0), fifo, dots/a..b, dots/..., up, up-abs.
# shellcheck source=guest-images/guest/lib/scenario.sh
. /usr/lib/fsr/scenario.sh

SECRET=HOST-SECRET

share_dir "${1:-}"
fresh_work iso

# no_secret WHAT PATH: reading PATH (which may fail) must not show the secret.
no_secret() {
	if content=$(cat "$2" 2>&1); then
		case $content in *"$SECRET"*) fail "$1 reached the host's secret file" ;; esac
		say "$1: read '$content', the guest's own file, not the secret"
	else
		say "$1: no secret ($content)"
	fi
}

echo plain >plain.txt || fail "write plain.txt"

# 1. The redirect metadata is invisible and cannot be set or removed.
names=$(fsr-xattr list plain.txt) || fail "listxattr on plain.txt: $names"
case $names in *fsredirect*) fail "listxattr shows the redirect metadata: $names" ;; esac
for name in trusted.fsredirect user.fsredirect; do
	out=$(fsr-xattr get plain.txt $name) && fail "getxattr $name gave '$out'"
	out=$(fsr-xattr set plain.txt $name R1smoke) && fail "setxattr $name succeeded"
	say "setxattr $name refused ($out)"
	out=$(fsr-xattr remove plain.txt $name) && fail "removexattr $name succeeded"
done
# A guest's own attribute still works (so the refusals above are specific).
fsr-xattr set plain.txt user.note kept || fail "setxattr user.note"
[ "$(fsr-xattr get plain.txt user.note)" = kept ] || fail "getxattr user.note"
say "redirect metadata hidden and unforgeable; user.note works"

# 2. Paths out of the share resolve in the guest, never on the host.
no_secret "a '..' path" "$dir/../secret.txt"
ln -s ../../secret.txt up || fail "symlink up"
no_secret "a relative symlink out of the tree" up
ln -s /share/smoke/secret.txt up-abs || fail "symlink up-abs"
no_secret "an absolute symlink to the host path" up-abs
mkdir dots || fail "mkdir dots"
echo dots >dots/a..b || fail "write dots/a..b"
echo dots >dots/... || fail "write dots/..."
expect_content dots/a..b dots
expect_content dots/... dots
say "names with dots stay names"

# 3. Special files are the guest's own: a device node opens the guest's
#    driver, and the host gets an inert regular file.
mknod null c 1 3 || fail "mknod null"
mknod disk b 8 0 || fail "mknod disk"
mkfifo fifo || fail "mkfifo"
[ "$(stat -c %F null)" = "character special file" ] || fail "null is a $(stat -c %F null)"
[ "$(stat -c %t,%T null)" = "1,3" ] || fail "null has device $(stat -c %t,%T null)"
[ "$(stat -c %F disk)" = "block special file" ] || fail "disk is a $(stat -c %F disk)"
[ "$(stat -c %F fifo)" = "fifo" ] || fail "fifo is a $(stat -c %F fifo)"
echo into-the-guest-null >null || fail "write to null (the guest's /dev/null driver)"
say "special files made: null, disk, fifo"

# 4. A setuid bit stays the guest's business (the host checks the object).
chmod 4755 plain.txt || fail "chmod 4755 plain.txt"
[ "$(stat -c %a plain.txt)" = 4755 ] || fail "plain.txt mode is $(stat -c %a plain.txt)"

sync || fail "sync"
say "all steps passed"
