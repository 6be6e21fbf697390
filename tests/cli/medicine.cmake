# Model medicine on the command line (included by CMakeLists.txt): probe, direction, orthogonalize, control-vector,
# and --ablate-direction / --control-vector on the other commands.
file(WRITE ${out}/medicine_positive.txt "The dog was very happy\nShe smiled and laughed\nHe was so happy and glad\nThey played and had fun\n")
file(WRITE ${out}/medicine_negative.txt "The dog was very sad\nShe cried and cried\nHe was so sad and angry\nThey were scared and sad\n")
file(WRITE ${out}/medicine_probe.txt
     "1\tThe dog was very happy\n0\tThe dog was very sad\n1\tShe smiled and laughed\n0\tShe cried and cried\n"
     "1\tHe was so happy and glad\n0\tHe was so sad and angry\n1\tThey played and had fun\n0\tThey were scared and sad\n"
     "1\tLily was happy to see the sun\n0\tLily was sad to see the rain\n1\tTom laughed with his friends\n"
     "0\tTom cried alone in his room\n1\tThe bird sang a happy song\n0\tThe bird was sad and quiet\n"
     "1\tMom hugged her and smiled\n0\tMom was angry and sad\n")

mechlens_cli_test(direction 0 "4 positive, 4 negative prompts.*mean direction at blocks.2.hook_resid_post: norm.*wrote .*medicine_d2.npy"
                  - ${bin} ${cli} direction --model ${bin} --positive ${out}/medicine_positive.txt
                  --negative ${out}/medicine_negative.txt --layer 2 --out ${out}/medicine_d2.npy)
mechlens_cli_test(direction_pca 0 "pca direction at blocks.2.hook_resid_pre.*explaining [0-9.]+ % of the paired" - ${bin}
                  ${cli} direction --model ${bin} --positive ${out}/medicine_positive.txt
                  --negative ${out}/medicine_negative.txt --layer 2 --site resid_pre --method pca
                  --out ${out}/medicine_d2_pca.npy)
mechlens_cli_test(control_vector 0 "wrote .*medicine_cv.gguf: direction.1 .. direction.4" - ${bin}
                  ${cli} control-vector --model ${bin} --positive ${out}/medicine_positive.txt
                  --negative ${out}/medicine_negative.txt --layers 1-4 --out ${out}/medicine_cv.gguf)
set_tests_properties(cli:direction PROPERTIES FIXTURES_SETUP cli_medicine_direction)
set_tests_properties(cli:control_vector PROPERTIES FIXTURES_SETUP cli_medicine_cv)

# The control vector steers generation: at strength 0.2 stories260K's greedy story changes to the text llama.cpp
# (c392e50, llama-cli --control-vector-scaled FILE 0.2 --temp 0) prints for the same file (docs/MEDICINE.md).
mechlens_cli_test(generate_control_vector 0
                  "Once upon a time, there was a little girl named Lily. She loved to play with her toys in the park."
                  "tok/s" ${bin} ${cli} generate --model ${bin} --prompt "Once upon a time" -n 30
                  --control-vector ${out}/medicine_cv.gguf:0.2)
set_tests_properties(cli:generate_control_vector PROPERTIES FIXTURES_REQUIRED cli_medicine_cv)

# Run-time ablation and the orthogonalised weights give the same logits.
mechlens_cli_test(logits_ablate_direction 0 - "logits \\(5, 512\\)" ${bin}
                  ${cli} logits --model ${bin} --tokens 1,403,407,261,378 --ablate-direction ${out}/medicine_d2.npy
                  --out ${out}/medicine_ablated_logits.npy)
mechlens_cli_test(orthogonalize 0 "wrote .*medicine_orthogonal.safetensors.*unembedding untied" - ${bin}
                  ${cli} orthogonalize --model ${bin} --direction ${out}/medicine_d2.npy
                  --out ${out}/medicine_orthogonal.safetensors)
mechlens_cli_test(logits_orthogonalized 0 - "logits \\(5, 512\\)" ${bin}
                  ${cli} logits --model ${out}/medicine_orthogonal.safetensors --tokens 1,403,407,261,378
                  --out ${out}/medicine_orthogonal_logits.npy)
set_tests_properties(cli:logits_ablate_direction cli:orthogonalize PROPERTIES FIXTURES_REQUIRED cli_medicine_direction)
set_tests_properties(cli:logits_ablate_direction PROPERTIES FIXTURES_SETUP cli_medicine_ablated)
set_tests_properties(cli:orthogonalize PROPERTIES FIXTURES_SETUP cli_medicine_orthogonal)
set_tests_properties(cli:logits_orthogonalized PROPERTIES FIXTURES_REQUIRED cli_medicine_orthogonal
                     FIXTURES_SETUP cli_medicine_orthogonal_logits)
mechlens_cli_test(cache_ablate_direction 0 "blocks.4.hook_resid_post \\(1, 5, 64\\)" - ${bin}
                  ${cli} cache --model ${bin} --tokens 1,403,407,261,378 --names "blocks.*.hook_resid_post"
                  --ablate-direction ${out}/medicine_d2.npy:1-3)
set_tests_properties(cli:cache_ablate_direction PROPERTIES FIXTURES_REQUIRED cli_medicine_direction)
if(Python3_FOUND)
  mechlens_cli_test(orthogonalized_logits_match_ablation 0 "PASS" - ${bin}
                    ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/check_npy.py ${out}/medicine_orthogonal_logits.npy
                    ${out}/medicine_ablated_logits.npy 5 512 1e-4)
  mechlens_cli_test(ablation_changes_logits 0 "PASS" - ${bin}
                    ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/check_npy.py ${out}/medicine_ablated_logits.npy
                    ${PROJECT_SOURCE_DIR}/tests/reference/fixtures/stories260K/p0/logits.npy 5 512 1e-2 differ)
  set_tests_properties(cli:orthogonalized_logits_match_ablation PROPERTIES
                       FIXTURES_REQUIRED "cli_medicine_ablated;cli_medicine_orthogonal_logits")
  set_tests_properties(cli:ablation_changes_logits PROPERTIES FIXTURES_REQUIRED cli_medicine_ablated)
endif()

mechlens_cli_test(probe 0 "probes on 16 prompts \\(12 to fit, 4 held out\\).*blocks.4.hook_resid_post +100.0%" - ${bin}
                  ${cli} probe --model ${bin} --data ${out}/medicine_probe.txt --sites "blocks.*.hook_resid_post"
                  --held-out 0.25 --out ${out}/medicine_probes.safetensors)

# Errors: one line, exit 2.
mechlens_cli_test(error_control_vector_block_0 2 - "--layers must be A-B with 1 <= A <= B < 5" ${bin}
                  ${cli} control-vector --model ${bin} --positive ${out}/medicine_positive.txt
                  --negative ${out}/medicine_negative.txt --layers 0-2 --out ${out}/never.gguf)
mechlens_cli_test(error_not_a_control_vector 2 - "not a control vector" ${gguf}
                  ${cli} generate --model ${bin} --prompt "Once" -n 2 --control-vector ${gguf}:1)
mechlens_cli_test(error_direction_width 2 - "has 2560 values. the model's d_model is 64" ${bin}
                  ${cli} orthogonalize --model ${bin} --direction ${PROJECT_SOURCE_DIR}/tests/reference/fixtures/stories260K/p0/logits.npy
                  --out ${out}/never.safetensors)
mechlens_cli_test(error_probe_label 2 - "--data line 1: expected 'LABEL<TAB>TEXT' with LABEL 0 or 1" ${bin}
                  ${cli} probe --model ${bin} --data ${out}/medicine_positive.txt --sites "blocks.0.hook_resid_post")
mechlens_cli_test(error_ablate_direction_layer 2 - "layer 7 is out of range" ${bin}
                  ${cli} logits --model ${bin} --tokens 1,403 --ablate-direction ${out}/medicine_d2.npy:7
                  --out ${out}/never.npy)
set_tests_properties(cli:error_ablate_direction_layer PROPERTIES FIXTURES_REQUIRED cli_medicine_direction)
