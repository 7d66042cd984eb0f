# The float types every kernel is specialized for. Defined once, cimported everywhere.
ctypedef fused floating_t:
    float
    double

ctypedef unsigned char uchar

# Compact within-window argmax kept by max-pooling layers for backward.
ctypedef fused tap_t:
    uchar
    int

# What a max-pooling forward may write its taps into: the compact argmax, or the int64
# array that then becomes the indices in place (return_indices needs no tap array).
ctypedef fused tap_out_t:
    uchar
    int
    long long

ctypedef signed char schar

# Element types of max pooling, which also runs on integers (ONNX MaxPool's uint8/int8).
ctypedef fused max_t:
    float
    double
    uchar
    schar
    short
    int
    long long
