#!/bin/busybox sh
# Stage 1 (PID 1 in the initramfs built by tests/vm/runner.py): mount the host's root
# read-only over 9p, writable tmpfs where the guest needs to write, the exchange directory
# read-write, then switch_root into the host's root and run stage 2 (tests/vm/guest_init.sh).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
bb=/bin/busybox
fail() { echo "initramfs: $*" > /dev/console; $bb sleep 1; echo o > /proc/sysrq-trigger; }
for m in $($bb cat /modules/order); do
    $bb insmod "/modules/$m" || fail "insmod $m failed"
done
xchg= ; init= ; proj=
for w in $($bb cat /proc/cmdline); do
    case "$w" in
        ipnf.xchg=*) xchg="${w#ipnf.xchg=}" ;;
        ipnf.init=*) init="${w#ipnf.init=}" ;;
        ipnf.proj=*) proj="${w#ipnf.proj=}" ;;
    esac
done
opts=trans=virtio,version=9p2000.L,msize=512000
$bb mount -t 9p -o "$opts,ro,cache=loose" hostroot /newroot || fail "mounting the host root failed"
for d in proc sys dev; do $bb mount --move "/$d" "/newroot/$d"; done
$bb mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts 2>/dev/null
$bb mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm 2>/dev/null
for d in /tmp /run /var/tmp; do
    $bb mount -t tmpfs -o mode=0755 tmpfs "/newroot$d" || fail "tmpfs on $d failed"
done
$bb chmod 1777 /newroot/tmp /newroot/var/tmp
$bb mkdir -p /newroot/run/lock /newroot/run/netns
if [ -n "$proj" ]; then
    # the project may live under a directory that is now a tmpfs (a checkout in /tmp)
    $bb mkdir -p "/newroot$proj" 2>/dev/null
    $bb mount -t 9p -o "$opts,ro,cache=loose" project "/newroot$proj" || fail "mounting $proj failed"
fi
if [ -n "$xchg" ]; then
    # the exchange dir lives under the host's /tmp, which is now a tmpfs: recreate the path
    $bb mkdir -p "/newroot$xchg"
    $bb mount -t 9p -o "$opts,cache=none" xchg "/newroot$xchg" || fail "mounting $xchg failed"
fi
exec $bb switch_root /newroot /bin/sh "$init"
