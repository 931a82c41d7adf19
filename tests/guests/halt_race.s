# Two vCPUs that both end halted with interrupts off, while the guest still runs. Run with
# --cpus 2; everything in real mode, the local APICs through their x2APIC MSRs.
#   The AP checks in and halts with interrupts off.
#   The BSP arms its LAPIC timer (20 ms, one-shot) and waits for it in HLT with interrupts
#   on. The timer's handler sends an NMI to the AP; then the BSP halts with interrupts off.
#   The AP's NMI handler runs for one second by the ACPI PM timer, then leaves through
#   debug-exit with 0x42.
# A halt detector that takes the AP's answer before the BSP ran and the BSP's after it halted
# again (`--x-kick-gap-ms`) sees two dead vCPUs while the AP runs.
        .include "common.inc"
        .set    FLAG, 0x6000            # byte: the AP checked in
        .set    TRAMPOLINE, 0x8000      # SIPI vector 0x08
        .set    TIMER_VECTOR, 0x40
        .set    PM_TIMER, 0x608         # ACPI PM timer, 3.579545 MHz, 24 bits
        .set    ONE_SECOND, 3579545
start:
        cli
        xor     ax, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7000
        mov     byte ptr es:[FLAG], 0
        copy_code trampoline, trampoline_end, TRAMPOLINE
        xor     ax, ax
        mov     ds, ax
        mov     word ptr [TIMER_VECTOR * 4], offset bsp_timer
        mov     word ptr [TIMER_VECTOR * 4 + 2], 0xF000
        mov     word ptr [2 * 4], ap_nmi - trampoline
        mov     word ptr [2 * 4 + 2], TRAMPOLINE >> 4
        # x2APIC mode, software-enabled.
        mov     ecx, 0x1B
        rdmsr
        or      eax, 0xC00
        wrmsr
        mov     ecx, 0x80F              # spurious vector register
        mov     eax, 0x1FF
        xor     edx, edx
        wrmsr
        # INIT, SIPI, SIPI to APIC ID 1.
        mov     ecx, 0x830
        mov     edx, 1
        mov     eax, 0x4500
        wrmsr
        mov     eax, 0x4608
        wrmsr
        wrmsr
1:      pause
        cmp     byte ptr [FLAG], 1
        jne     1b
        # LAPIC timer: one-shot, divide by 1, 20 ms at KVM's 1 GHz APIC bus.
        xor     edx, edx
        mov     ecx, 0x83E
        mov     eax, 0x0B
        wrmsr
        mov     ecx, 0x832
        mov     eax, TIMER_VECTOR
        wrmsr
        mov     ecx, 0x838
        mov     eax, 20000000
        wrmsr
        sti
        hlt
        cli
2:      hlt
        jmp     2b

bsp_timer:
        mov     ecx, 0x830              # NMI to APIC ID 1
        mov     edx, 1
        mov     eax, 0x4400
        wrmsr
        mov     ecx, 0x80B              # EOI
        xor     eax, eax
        xor     edx, edx
        wrmsr
        iret

# The AP's code, at 0800:0000 in real mode; position-independent.
trampoline:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     byte ptr [FLAG], 1
1:      hlt
        jmp     1b
ap_nmi:
        mov     dx, PM_TIMER
        in      eax, dx
        mov     ebx, eax
2:      in      eax, dx
        sub     eax, ebx
        and     eax, 0xFFFFFF
        cmp     eax, ONE_SECOND
        jb      2b
        exit    0x42
trampoline_end:
