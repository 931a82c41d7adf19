# Reads the CMOS clock in BCD mode and in binary mode, and the NVRAM memory bytes, and prints
# them as hex bytes:
#   bcd CC YY MM DD hh mm ss
#   bin CC YY MM DD hh mm ss
#   nvram 15 16 17 18 30 31 34 35 5b 5c 5d 5f
# then halts with interrupts off.
        .include "common.inc"
start:
        cli
        mov     si, offset bcd
        call    print
        call    print_time
        # Register B: binary mode (DM), 24-hour.
        mov     al, 0x0B
        out     0x70, al
        in      al, 0x71
        or      al, 0x06
        mov     ah, al
        mov     al, 0x0B
        out     0x70, al
        mov     al, ah
        out     0x71, al
        mov     si, offset bin
        call    print
        call    print_time
        mov     si, offset nvram
        call    print
        mov     si, offset nvram_regs
        call    print_regs
3:      hlt
        jmp     3b

# print_time: wait until no update is in progress, then print the clock registers.
print_time:
        mov     al, 0x0A
        call    cmos_read
        test    al, 0x80
        jnz     print_time
        mov     si, offset time_regs
        # fall through

# print_regs: print the registers listed at CS:SI (0xFF ends the list), then CR LF.
print_regs:
1:      mov     al, cs:[si]
        cmp     al, 0xFF
        je      2f
        call    cmos_read
        call    print_hex
        inc     si
        jmp     1b
2:      mov     si, offset crlf
        jmp     print

# cmos_read: AL = register -> AL = value.
cmos_read:
        out     0x70, al
        in      al, 0x71
        ret

# print_hex: AL as two hex digits and a space.
print_hex:
        push    ax
        push    bx
        push    dx
        mov     dx, COM1
        mov     bl, al
        shr     al, 4
        call    nibble
        mov     al, bl
        and     al, 0x0F
        call    nibble
        mov     al, ' '
        out     dx, al
        pop     dx
        pop     bx
        pop     ax
        ret
nibble:
        add     al, '0'
        cmp     al, '9'
        jbe     1f
        add     al, 'a' - '9' - 1
1:      out     dx, al
        ret

time_regs:  .byte 0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00, 0xFF
nvram_regs: .byte 0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5B, 0x5C, 0x5D, 0x5F, 0xFF
bcd:        .asciz "bcd "
bin:        .asciz "bin "
nvram:      .asciz "nvram "
crlf:       .asciz "\r\n"
