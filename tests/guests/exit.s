# Writes CODE to the debug-exit port with an access of WIDTH bytes (set with --defsym).
        .include "common.inc"
start:
        mov     eax, CODE
        .if WIDTH == 1
        out     DEBUG_EXIT, al
        .elseif WIDTH == 2
        out     DEBUG_EXIT, ax
        .else
        out     DEBUG_EXIT, eax
        .endif
        # Not reached: the VMM stops the guest at the write.
        exit    0x7F
