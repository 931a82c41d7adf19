# A synthetic Linux bzImage (boot protocol 2.15): a real setup header, a real-mode setup
# entry, a 32-bit entry at the start of the protected-mode kernel and a 64-bit entry 0x200
# further, as Documentation/arch/x86/boot.rst lays them out. Each entry reports what the
# boot protocol promised it on COM1 ("name=value" lines) and leaves through debug-exit:
# 16-bit 0x10, 32-bit 0x20, 64-bit 0x30.
        .intel_syntax noprefix
        .include "kprint.inc"
        .include "bootparams.inc"
        .set    SETUP_SECTS, 4

        .section .setup, "ax"
        .code16
        .org    0x1F1
        .byte   SETUP_SECTS                     # setup_sects
        .word   0                               # root_flags
        .long   0                               # syssize
        .word   0                               # ram_size
        .word   0xFFFF                          # vid_mode
        .word   0                               # root_dev
        .word   0xAA55                          # boot_flag
        .byte   0xEB, setup16 - 0x202           # jump
        .ascii  "HdrS"                          # header
        .word   0x020F                          # version
        .long   0                               # realmode_swtch
        .word   0                               # start_sys_seg
        .word   0                               # kernel_version
        .byte   0                               # type_of_loader
        .byte   0x01                            # loadflags: LOADED_HIGH
        .word   0                               # setup_move_size
        .long   0x100000                        # code32_start
        .long   0                               # ramdisk_image
        .long   0                               # ramdisk_size
        .long   0                               # bootsect_kludge
        .word   0                               # heap_end_ptr
        .byte   0, 0                            # ext_loader_ver, ext_loader_type
        .long   0                               # cmd_line_ptr
        .long   0x7FFFFFFF                      # initrd_addr_max
        .long   0x1000                          # kernel_alignment
        .byte   1                               # relocatable_kernel
        .byte   12                              # min_alignment
        .word   0x0003                          # xloadflags: KERNEL_64, CAN_BE_LOADED_ABOVE_4G
        .long   2048                            # cmdline_size
        .long   0                               # hardware_subarch
        .quad   0                               # hardware_subarch_data
        .long   0, 0                            # payload_offset, payload_length
        .quad   0                               # setup_data
        .quad   0x100000                        # pref_address
        .long   0x10000                         # init_size
        .long   0                               # handover_offset
        .long   0                               # kernel_info_offset

# The real-mode entry: CS = DS + 0x20, DS = ES = SS = the setup segment.
        .org    0x270
setup16:
        show    16, mode, 0x16
        mov     bx, cs
        movzx   ebx, bx
        show    16, cs, ebx
        mov     bx, ds
        movzx   ebx, bx
        show    16, ds, ebx
        mov     bx, ss
        movzx   ebx, bx
        show    16, ss, ebx
        movzx   ebx, sp
        show    16, sp, ebx
        pushfd
        pop     ebx
        show    16, eflags, ebx
        movzx   ebx, byte ptr [0x210]
        show    16, loader, ebx
        movzx   ebx, byte ptr [0x211]
        show    16, loadflags, ebx
        movzx   ebx, word ptr [0x224]
        show    16, heap_end_ptr, ebx
        mov     ebx, [0x214]
        show    16, code32_start, ebx
        mov     ebx, [0x218]
        show    16, initrd, ebx
        mov     ebx, [0x21C]
        show    16, initrd_size, ebx
        mov     ebx, [0x228]
        show    16, cmd_line_ptr, ebx
        # The command line, through a segment that reaches it.
        mov     esi, offset s_cmdline
        call    puts16
        mov     ebx, [0x228]
        push    ds
        mov     eax, ebx
        shr     eax, 4
        mov     ds, ax
        and     ebx, 0xF
        mov     esi, ebx
        call    puts16
        pop     ds
        call    nl16
        # The BIOS: the fixed disks INT 13h AH=08h reports for drive 80h (0 without a disk),
        # a teletype character, then the E820 map.
        mov     ah, 0x08
        mov     dl, 0x80
        push    es
        int     0x13
        pop     es
        jnc     1f
        xor     dl, dl
1:      movzx   ebx, dl
        show    16, fixed_disks, ebx
        mov     esi, offset s_int10
        call    puts16
        mov     ax, 0x0E56                      # 'V'
        xor     bx, bx
        int     0x10
        call    nl16
        xor     ebx, ebx
1:      mov     eax, 0xE820
        mov     edx, 0x534D4150
        mov     ecx, 20
        mov     di, 0xE000
        int     0x15
        jc      2f
        mov     [e820_next], ebx
        mov     ebx, es:[0xE000]
        show    16, e820_base, ebx
        mov     ebx, es:[0xE008]
        show    16, e820_len, ebx
        mov     ebx, es:[0xE010]
        show    16, e820_type, ebx
        mov     ebx, [e820_next]
        test    ebx, ebx
        jnz     1b
2:      kexit   0x10
        cli
        hlt

        kprint_routines 16
        .pushsection .kstr16, "a"
s_cmdline:      .asciz "cmdline="
s_int10:        .asciz "int10="
        .popsection
e820_next:      .long 0

# The protected-mode kernel, at code32_start.
        .section .text32, "ax"
        .code32
        .globl  startup_32
startup_32:
        jmp     main32
        .section .text32.main, "ax"
main32:
        mov     ebp, esi
        show    32, mode, 0x32
        report  32, ebx
        kexit   0x20
        cli
        hlt
        kprint_routines 32

        .section .text64, "ax"
        .code64
startup_64:
        mov     ebp, esi
        show    64, mode, 0x64
        report  64, rbx
        mov     ecx, 0xC0000080
        rdmsr
        mov     ebx, eax
        show    64, efer, ebx
        kexit   0x30
        cli
        hlt
        kprint_routines 64

        .section .data
        report_data
