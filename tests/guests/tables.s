# Looks for the platform tables where an OS does: the ACPI RSDP ("RSD PTR ") on 16-byte
# boundaries in 0xE0000-0xFFFFF, the MP floating pointer ("_MP_") in the EBDA's first KiB and
# in 0xF0000-0xFFFFF. Prints "rsdp SSSS:OOOO sum XX" and "mp SSSS:OOOO sum XX" for what it
# finds (XX: the 8-bit sum of the structure, 20 and 16 bytes; 00 when valid), then "end".
        .include "common.inc"
start:
        cli
        mov     ax, 0xE000
        call    scan_rsdp
        mov     ax, 0xF000
        call    scan_rsdp
        mov     ax, 0x9FC0
        mov     cx, 0x400 / 16
        call    scan_mp
        mov     ax, 0xF000
        mov     cx, 0x1000
        call    scan_mp
        mov     si, offset end_msg
        call    print
1:      hlt
        jmp     1b

# scan_rsdp: segment AX, all 64 KiB.
scan_rsdp:
        mov     es, ax
        xor     di, di
1:      cmp     dword ptr es:[di], 0x20445352           # "RSD "
        jne     2f
        cmp     dword ptr es:[di + 4], 0x20525450       # "PTR "
        jne     2f
        mov     si, offset rsdp_msg
        mov     cx, 20
        call    report
2:      add     di, 16
        jnz     1b
        ret

# scan_mp: segment AX, CX paragraphs.
scan_mp:
        mov     es, ax
        xor     di, di
1:      cmp     dword ptr es:[di], 0x5F504D5F           # "_MP_"
        jne     2f
        push    cx
        mov     si, offset mp_msg
        mov     cx, 16
        call    report
        pop     cx
2:      add     di, 16
        loop    1b
        ret

# report: print the tag at CS:SI, ES:DI, and the sum of CX bytes there.
report:
        call    print
        mov     ax, es
        call    hex16
        mov     al, ':'
        call    putc
        mov     ax, di
        call    hex16
        mov     si, offset sum_msg
        call    print
        xor     bl, bl
        push    di
1:      add     bl, es:[di]
        inc     di
        loop    1b
        pop     di
        mov     al, bl
        mov     ah, al
        call    hex8
        mov     si, offset crlf
        call    print
        ret

putc:
        push    dx
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret
hex16:
        push    ax
        mov     al, ah
        call    hex8
        pop     ax
hex8:
        push    ax
        shr     al, 4
        call    nib
        pop     ax
        push    ax
        and     al, 0x0F
        call    nib
        pop     ax
        ret
nib:
        add     al, '0'
        cmp     al, '9'
        jbe     1f
        add     al, 'a' - '9' - 1
1:      jmp     putc

rsdp_msg:   .asciz "rsdp "
mp_msg:     .asciz "mp "
sum_msg:    .asciz " sum "
crlf:       .asciz "\r\n"
end_msg:    .asciz "end\r\n"
