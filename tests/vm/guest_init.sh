#!/bin/sh
# Stage 2 (PID 1 in the guest, running on the host's root filesystem, read-only, after
# switch_root): run the job the host wrote to $xchg/job.sh, save its output and exit code
# there, then power off. Never returns (PID 1 must not exit).
xchg=
for w in $(cat /proc/cmdline); do
    case "$w" in ipnf.xchg=*) xchg="${w#ipnf.xchg=}" ;; esac
done
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /tmp/home
export HOME=/tmp/home TMPDIR=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
export IPSEC_NFLOG_IN_VM=1
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up 2>/dev/null
hostname ipnf-vm 2>/dev/null
cat /proc/uptime > "$xchg/uptime-at-start"
sh "$xchg/job.sh" > "$xchg/output.log" 2>&1 < /dev/null
echo $? > "$xchg/exitcode"
sync
echo o > /proc/sysrq-trigger
sleep 10
