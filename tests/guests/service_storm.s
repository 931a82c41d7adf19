# A user's firmware (--firmware) writing to the embedded firmware's service ports: they are
# unassigned ports here (storm.inc). Leaves through debug-exit with 0x10, or 0x20 + the
# failed check.
        .include "common.inc"
        .include "storm.inc"
start:
        cli
        xor     ax, ax
        mov     ss, ax
        mov     sp, 0x7000
        storm_ports
        jc      1f
        mov     al, 0x10
        out     DEBUG_EXIT, al
1:      add     al, 0x20
        out     DEBUG_EXIT, al
