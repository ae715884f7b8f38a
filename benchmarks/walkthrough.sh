#!/usr/bin/env bash
# bash benchmarks/walkthrough.sh REPO > docs/runs/walkthrough_cpu.md   (after `bash .ci/run` in a fresh clone of REPO)
# walk-through of issue #32 on a fresh clone (tiny model unless said); prints a markdown table
cd "$1"; D=$(cd ../shared/data && pwd); Z=.venv/bin/zolightning; W=$(mktemp -d); T="--data.data_dir $D --trainer.enable_progress_bar false"
row() { local name="$1"; shift; local out; out=$( { timeout 900 "$@"; } 2>&1 ); local rc=$?; local last=$(echo "$out" | grep -v '^\s*$' | tail -1 | cut -c1-150 | tr '|' '/'); echo "| $name | $rc | \`$last\` |"; }
echo "| step | exit | last line |"; echo "|---|---|---|"
row "README train command (20 steps, SmolLM2)" bash scripts/train.sh --data.data_dir $D --trainer.max_steps 20 --trainer.val_check_interval 20 --trainer.limit_val_batches 4 --trainer.logger.init_args.save_dir $W/main
row "tiny fit from another folder, config by name" bash -c "cd $W && $PWD/$Z fit --config tiny/sst2_mezo $T --trainer.default_root_dir out"
C=$W/out/logs/tiny-sst2-mezo/version_0/checkpoints/last.ckpt
row "validate (zero-shot)" $Z validate --config tiny/sst2_mezo $T --trainer.logger false
row "test the checkpoint" $Z test --config tiny/sst2_mezo $T --trainer.logger false --ckpt_path $C
row "predict the eval split" $Z predict --config tiny/sst2_mezo $T --ckpt_path $C --trainer.logger.init_args.save_dir $W/pred
row "generate from the checkpoint" $Z generate $C "a moving film" --max-new-tokens 5
row "export (model card)" $Z export $C $W/exported
row "transformers from_pretrained + generate" .venv/bin/python -c "from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; m=M.from_pretrained('$W/exported'); t=T.from_pretrained('$W/exported'); print(t.decode(m.generate(**t('hi', return_tensors='pt'), max_new_tokens=4)[0]))"
row "LoRA fit" $Z fit --config tiny/sst2_mezo $T --model.peft lora --trainer.logger.init_args.save_dir $W/lora
L=$W/lora/tiny-sst2-mezo/version_0/checkpoints/last.ckpt
row "LoRA checkpoint size (bytes)" stat -c %s $L
row "export --adapter-only" $Z export $L $W/adapter --adapter-only
row "push to hub without network" env HF_HUB_OFFLINE=1 $Z export $L $W/pushed --push-to-hub me/x
mkdir -p $W/qa; for s in train validation; do for i in $(seq 1 12); do echo "{\"prompt\": \"Q: $i plus one?\\nA:\", \"completion\": \" $((i+1))\"}"; done > $W/qa/$s.jsonl; done
printf 'name: qa\npreset: prompt_completion\nnum_dev: 2\ndata: {train: train.jsonl, validation: validation.jsonl}\n' > $W/qa/task.yaml
row "own prompt/completion data" $Z fit --config tiny/sst2_mezo $T --data.task $W/qa/task.yaml --data.num_train 8 --data.num_dev 2 --data.num_eval 2 --data.max_new_tokens 3 --trainer.max_steps 4 --trainer.val_check_interval 4 --trainer.logger false
printf '{"sentence": "fine", "label": 1}\n{"sentence": 3, "label": 0}\n' > $W/bad.jsonl; mkdir -p $W/bad/sst2; cp $W/bad.jsonl $W/bad/sst2/train.jsonl; cp $W/bad.jsonl $W/bad/sst2/validation.jsonl
row "a bad data row" $Z fit --config tiny/sst2_mezo --data.data_dir $W/bad --trainer.logger false
row "a mistyped flag" $Z fit --config tiny/sst2_mezo --model.lrr 1
row "configs list" bash -c "$Z configs list | wc -l"
